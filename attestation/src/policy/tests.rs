use super::*;

const MINIMAL: &str = r#"
name = "p"
version = 1
trust_root = "intel"
[td]
[[td.profiles]]
label = "a"
mr_td = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
"#;

fn example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/example.toml"
    ))
    .unwrap()
}

#[test]
fn shipped_policies_parse() {
    let p = Policy::from_toml_str(&example()).unwrap();
    assert_eq!(p.trust_root, TrustRoot::Intel);
    assert_eq!(p.td.profiles.len(), 1);
    let mock = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/mock.toml"
    ))
    .unwrap();
    assert_eq!(
        Policy::from_toml_str(&mock).unwrap().trust_root,
        TrustRoot::Mock
    );
}

#[test]
fn defaults_are_strict() {
    let p = Policy::from_toml_str(MINIMAL).unwrap();
    assert_eq!(p.tcb.allowed_statuses, [TcbStatus::UpToDate]);
    assert!(!p.tcb.allow_dynamic_platform && !p.tcb.allow_cached_keys && !p.tcb.allow_smt);
    assert!(!p.td.allow_debug);
    assert_eq!(p.binding.max_quote_age_secs, 600);
    assert_eq!(p.tcb.max_collateral_age_secs, 2_592_000);
    assert_eq!(TcbPolicy::default().max_collateral_age_secs, 2_592_000);
}

/// Issue 13, item 2: a policy that omits the collateral age limit gets 30 days, not none;
/// it may set another limit, but not switch it off.
#[test]
fn collateral_age_limit_defaults_to_30_days_and_may_be_set() {
    let omitted = Policy::from_toml_str(MINIMAL).unwrap();
    assert_eq!(
        omitted.tcb.max_collateral_age_secs,
        DEFAULT_COLLATERAL_AGE_SECS
    );
    assert_eq!(DEFAULT_COLLATERAL_AGE_SECS, 30 * 86_400);
    // Writing the default changes nothing, not even the digest.
    let written = Policy::from_toml_str(
        &MINIMAL.replace("[td]", "[tcb]\nmax_collateral_age_secs = 2592000\n[td]"),
    )
    .unwrap();
    assert_eq!(written, omitted);
    assert_eq!(written.digest(), omitted.digest());
    // Another value is taken, and is another policy.
    let week = Policy::from_toml_str(
        &MINIMAL.replace("[td]", "[tcb]\nmax_collateral_age_secs = 604800\n[td]"),
    )
    .unwrap();
    assert_eq!(week.tcb.max_collateral_age_secs, 604_800);
    assert_ne!(week.digest(), omitted.digest());
    // Zero would refuse every collateral: an error, not a silent lock-out.
    let err =
        Policy::from_toml_str(&MINIMAL.replace("[td]", "[tcb]\nmax_collateral_age_secs = 0\n[td]"))
            .unwrap_err();
    assert!(
        matches!(err, PolicyError::Invalid { ref field, .. } if field == "tcb.max_collateral_age_secs"),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_errors_at_every_level() {
    for (from, to) in [
        ("version = 1", "version = 1\ncolour = \"red\""),
        ("[td]", "[td]\nallow_debugg = true"),
        ("label = \"a\"", "label = \"a\"\nrtmr4 = \"00\""),
    ] {
        let err = Policy::from_toml_str(&MINIMAL.replace(from, to)).unwrap_err();
        assert!(
            matches!(err, PolicyError::Syntax(ref m) if m.contains("unknown field")),
            "{err}"
        );
    }
    // The twin: a known optional key is fine.
    assert!(Policy::from_toml_str(&MINIMAL.replace("[td]", "[td]\nallow_debug = false")).is_ok());
}

#[test]
fn hex_lengths_are_checked() {
    let short = MINIMAL.replace("b7\"", "\"");
    let err = Policy::from_toml_str(&short).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected 48 bytes (96 hex digits)"),
        "{err}"
    );
    let not_hex = MINIMAL.replace("91eb", "91zz");
    assert!(Policy::from_toml_str(&not_hex).is_err());
    let bad_attr = MINIMAL.replace("[td]", "[td]\nattributes = \"00000010\"");
    assert!(Policy::from_toml_str(&bad_attr)
        .unwrap_err()
        .to_string()
        .contains("expected 8 bytes"));
    // Upper case is accepted and normalized.
    let upper = MINIMAL.replace("91eb2b44", "91EB2B44");
    assert_eq!(
        Policy::from_toml_str(&upper).unwrap().digest(),
        Policy::from_toml_str(MINIMAL).unwrap().digest()
    );
}

#[test]
fn rules_beyond_the_schema() {
    let cases = [
        (
            MINIMAL.replace(
                "trust_root = \"intel\"",
                "trust_root = \"intel\"\n[tcb]\nallowed_statuses = [\"Revoked\"]",
            ),
            "Revoked",
        ),
        (
            MINIMAL.replace(
                "trust_root = \"intel\"",
                "trust_root = \"intel\"\n[tcb]\nallowed_statuses = []",
            ),
            "at least one",
        ),
        (
            MINIMAL.replace("[td]", "[td]\nattributes_mask = \"ffffffff00000000\""),
            "without td.attributes",
        ),
        (
            MINIMAL.replace("mr_td = ", "# mr_td = "),
            "pins no measurement",
        ),
        (
            MINIMAL.split("[[td.profiles]]").next().unwrap().to_owned(),
            "at least one [[td.profiles]]",
        ),
        (
            format!("{MINIMAL}\n[binding]\nmax_quote_age_secs = 0\n"),
            "max_quote_age_secs",
        ),
        (MINIMAL.replace("name = \"p\"", "name = \"\""), "name"),
        (
            MINIMAL.replace("trust_root = \"intel\"", "trust_root = \"amd\""),
            "unknown variant",
        ),
        (
            MINIMAL.replace(
                "trust_root = \"intel\"",
                "trust_root = \"intel\"\n[tcb]\nallowed_statuses = [\"Fine\"]",
            ),
            "unknown variant",
        ),
    ];
    for (text, needle) in cases {
        let err = Policy::from_toml_str(&text).unwrap_err();
        assert!(err.to_string().contains(needle), "{needle}: {err}");
    }
}

/// Issue 13, item 8: a profile must pin mr_td. Host-chosen fields (and RTMRs, which the
/// unpinned firmware extends) alone are refused, naming the profile and what it pins.
#[test]
fn profiles_without_mr_td_are_refused() {
    let h = |b: &str| b.repeat(48);
    let pins = [
        format!("mr_owner = \"{}\"", h("11")),
        format!("mr_config_id = \"{}\"", h("22")),
        format!("mr_owner_config = \"{}\"", h("33")),
        format!(
            "mr_owner = \"{}\"\nmr_config_id = \"{}\"\nmr_owner_config = \"{}\"",
            h("11"),
            h("22"),
            h("33")
        ),
        format!("rtmr1 = \"{}\"\nrtmr2 = \"{}\"", h("44"), h("55")),
    ];
    let mr_td = format!("mr_td = \"{}\"", h("66"));
    for pin in &pins {
        let text = format!(
            "name = \"p\"\nversion = 1\ntrust_root = \"intel\"\n[td]\n\
             [[td.profiles]]\nlabel = \"ok\"\n{mr_td}\n[[td.profiles]]\nlabel = \"host\"\n{pin}\n"
        );
        let err = Policy::from_toml_str(&text).unwrap_err();
        let PolicyError::Invalid { field, reason } = &err else {
            panic!("{pin}: {err:?}")
        };
        assert_eq!(field, "td.profiles[1].mr_td", "{pin}: {err}");
        assert!(reason.contains("but not mr_td"), "{pin}: {err}");
        let first = pin.split(' ').next().unwrap();
        assert!(reason.contains(first), "{pin}: names {first}: {err}");
        // The twin: the same pins with mr_td are accepted.
        let with = text.replace(&format!("{pin}\n"), &format!("{pin}\n{mr_td}\n"));
        let p = Policy::from_toml_str(&with).unwrap_or_else(|e| panic!("{pin}: {e}"));
        assert!(p.td.profiles.iter().all(|profile| profile.mr_td.is_some()));
    }
}

#[test]
fn digest_ignores_formatting_order_and_defaults() {
    let a = Policy::from_toml_str(&example()).unwrap();
    // Comments stripped, keys reordered, spacing changed, defaults spelled out.
    let b = Policy::from_toml_str(
        r#"
trust_root="intel"
version=1
name="tessera-example"
[binding]
max_quote_age_secs=600
[td]
xfam_mask="FFFFFFFFFFFFFFFF"
xfam="e702060000000000"
attributes_mask="ffffffff00000000"
attributes="0000001000000000"
[[td.profiles]]
rtmr3="000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
mr_config_id="000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
rtmr2="d833feef2cd945148aa38ead2c53e9b7f138190aaaebfc551dccd829fc207aa3ba80b70870d7330733642e01d48c3132"
rtmr1="0084452c01668329d4bc06acdf58a7205c26743304509973949e5619bf81a6a7aea8c323c173019b3093d54e579e9378"
rtmr0="44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0"
mr_td="91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
label="dcap-qvl sample TD (tests/vectors/tdx/quote_uptodate.bin)"
[tcb]
max_collateral_age_secs=2592000
allowed_fmspcs=["b0c06f000000"]
allow_smt=true
allow_cached_keys=true
allow_dynamic_platform=true
min_tcb_eval_data_number=17
rejected_advisories=["INTEL-SA-00837","INTEL-SA-00837"]
"#,
    )
    .unwrap();
    assert_eq!(a.digest_hex(), b.digest_hex());
    assert_eq!(a.digest_hex().len(), 64);
}

#[test]
fn digest_changes_with_anything_that_decides_acceptance() {
    let base = Policy::from_toml_str(&example()).unwrap().digest();
    for (from, to) in [
        ("version = 1 ", "version = 2 "),
        ("allow_smt = true", "allow_smt = false"),
        ("\"INTEL-SA-00837\"", "\"INTEL-SA-00838\""),
        ("rtmr1 = \"0084", "rtmr1 = \"1084"),
        ("max_quote_age_secs = 600", "max_quote_age_secs = 601"),
        (
            "max_collateral_age_secs = 2592000",
            "max_collateral_age_secs = 2591999",
        ),
        ("trust_root = \"intel\"", "trust_root = \"mock\""),
    ] {
        let text = example();
        assert!(text.contains(from), "{from}");
        let changed = Policy::from_toml_str(&text.replacen(from, to, 1))
            .unwrap()
            .digest();
        assert_ne!(changed, base, "{from} -> {to}");
    }
}

#[test]
fn profile_order_does_not_change_the_digest() {
    let two = |first: &str, second: &str| {
        format!("name = \"p\"\nversion = 1\ntrust_root = \"intel\"\n[td]\n[[td.profiles]]\n{first}\n[[td.profiles]]\n{second}\n")
    };
    let a = format!("label = \"a\"\nmr_td = \"{}\"", "11".repeat(48));
    let b = format!("label = \"b\"\nmr_td = \"{}\"", "22".repeat(48));
    let ab = Policy::from_toml_str(&two(&a, &b)).unwrap();
    let ba = Policy::from_toml_str(&two(&b, &a)).unwrap();
    assert_eq!(ab.digest(), ba.digest());
}
