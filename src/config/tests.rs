//! Tests of `node.toml` parsing and validation: what is accepted, and the errors that name
//! the field.
use super::*;

const KEY_A: &str = "8d3d2dc5bcf51f7a0b2a7ae2b3d73b8b4f3b7e8c7fcf4b0d6fc6d9a5cbc4a9e1";

fn key_hex() -> String {
    SecretKey::from_bytes(&[3; 32]).public().to_string()
}

fn good() -> String {
    format!(
        r#"
data_dir = "data"
listen = "127.0.0.1:7001"
bootstrap = ["{k}@127.0.0.1:7002"]
group_key_file = "group.key"
policies = ["mock.toml"]
attestation = "mock"
network_id = "test-net"
storage = "memory"
metrics = "127.0.0.1:9100"

[timers]
tick_ms = 20

[client]
allow = ["{k}"]
"#,
        k = key_hex()
    )
}

fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
    NodeConfig::from_toml_str(text, Path::new("/etc/tessera/node.toml"))
}

fn error_of(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("config accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_good_config_parses_with_defaults_and_resolved_paths() {
    let c = parse(&good()).expect("good config");
    assert_eq!(c.listen, "127.0.0.1:7001".parse().expect("addr"));
    assert_eq!(c.bootstrap.len(), 1);
    assert_eq!(c.bootstrap[0].id.to_string(), key_hex());
    assert_eq!(
        c.bootstrap[0].ip_addrs().next(),
        Some(&"127.0.0.1:7002".parse().expect("addr"))
    );
    assert_eq!(c.data_dir, Path::new("/etc/tessera/data"));
    assert_eq!(
        c.group_key,
        GroupKeySource::File(PathBuf::from("/etc/tessera/group.key"))
    );
    assert_eq!(c.policies, vec![PathBuf::from("/etc/tessera/mock.toml")]);
    assert_eq!(c.attestation, AttestationMode::Mock);
    assert_eq!(c.storage, StorageKind::Memory);
    assert_eq!(c.log_level, "info");
    assert_eq!(c.metrics, Some("127.0.0.1:9100".parse().expect("addr")));
    assert_eq!(
        c.timers,
        Timers {
            tick_ms: 20,
            ..Timers::default()
        }
    );
    let (raft, worker) = (c.consensus.raft(), c.consensus.worker());
    assert_eq!(worker.tick, Duration::from_millis(20));
    assert_eq!(raft.election_ticks, Timers::default().election_ticks);
    assert_eq!(raft.heartbeat_ticks, Timers::default().heartbeat_ticks);
    assert_eq!(worker.removal_timeout, Some(Duration::from_secs(300)));
    for (secs, want) in [(60, Some(Duration::from_secs(60))), (0, None)] {
        let text = good().replace(
            "tick_ms = 20",
            &format!("tick_ms = 20\nremoval_timeout_secs = {secs}"),
        );
        let config = parse(&text).expect("config");
        let worker = config.consensus.worker();
        assert_eq!(
            worker.removal_timeout, want,
            "removal_timeout_secs = {secs}"
        );
    }
    let allowed = SecretKey::from_bytes(&[3; 32]).public();
    let other = SecretKey::from_bytes(&[4; 32]).public();
    assert!(c.client.allows(&allowed));
    assert!(!c.client.allows(&other));
    assert!(c.operators.is_empty(), "no operators unless listed");
    let text = good().replace("[client]", &format!("[client]\noperators = [\"{other}\"]"));
    assert_eq!(parse(&text).expect("config").operators, vec![other]);
}

#[test]
fn clients_are_refused_unless_allowed() {
    let text = good().replace(&format!("allow = [\"{}\"]", key_hex()), "");
    let c = parse(&text).expect("config");
    assert!(!c.client.allows(&SecretKey::from_bytes(&[3; 32]).public()));
    let any = good().replace(&format!("allow = [\"{}\"]", key_hex()), "allow = \"any\"");
    assert!(parse(&any)
        .expect("config")
        .client
        .allows(&SecretKey::from_bytes(&[9; 32]).public()));
}

#[test]
fn unknown_fields_are_named() {
    let e = error_of(&format!("colour = \"blue\"\n{}", good()));
    assert!(e.starts_with("/etc/tessera/node.toml: "), "{e}");
    assert!(e.contains("unknown field `colour`"), "{e}");
    let e = error_of(&good().replace("tick_ms = 20", "tick_ms = 20\nticks = 3"));
    assert!(e.contains("unknown field `ticks`"), "{e}");
    let e = error_of(&good().replace("[client]", "[client]\ndeny = 1"));
    assert!(e.contains("unknown field `deny`"), "{e}");
}

#[test]
fn missing_required_fields_are_named() {
    for field in ["listen", "group_key_file", "attestation", "network_id"] {
        let text: String = good()
            .lines()
            .filter(|l| !l.starts_with(&format!("{field} =")))
            .map(|l| format!("{l}\n"))
            .collect();
        let e = error_of(&text);
        // The group key may come from [provision] instead: its absence says so.
        let want = if field == "group_key_file" {
            "node.toml: group_key_file: missing".to_string()
        } else {
            format!("missing field `{field}`")
        };
        assert!(e.contains(&want), "{field}: {e}");
    }
}

#[test]
fn bad_values_name_their_field() {
    let bad = [
        ("listen = \"127.0.0.1:7001\"", "listen = \"localhost\"", "node.toml: listen: expected <ip:port>, got \"localhost\""),
        ("bootstrap = [", "bootstrap = [\"x\", ", "node.toml: bootstrap[0]: expected <node id>@<ip:port> or <ip:port>, got \"x\""),
        ("bootstrap = [", "bootstrap = [\"127.0.0.1\", ", "node.toml: bootstrap[0]: expected <node id>@<ip:port> or <ip:port>, got \"127.0.0.1\""),
        ("127.0.0.1:7002\"]", "127.0.0.1:7002\", \"abc@127.0.0.1:1\"]", "node.toml: bootstrap[1]: expected <node id>@<ip:port>, got \"abc@127.0.0.1:1\" (node id"),
        ("127.0.0.1:7002\"]", "127.0.0.1:7002\", \"KEY@nowhere\"]", "node.toml: bootstrap[1]:"),
        ("attestation = \"mock\"", "attestation = \"sgx\"", "node.toml: attestation: expected \"tdx\" or \"mock\", got \"sgx\""),
        ("attestation = \"mock\"", "attestation = \"tdx\"", "node.toml: collateral_file: required with attestation = \"tdx\""),
        ("storage = \"memory\"", "storage = \"disk\"", "node.toml: storage: expected \"memory\" or \"rocksdb\""),
        ("metrics = \"127.0.0.1:9100\"", "metrics = \"9100\"", "node.toml: metrics: expected <ip:port>"),
        ("tick_ms = 20", "tick_ms = 0", "node.toml: timers.tick_ms: must be in 1..="),
        ("tick_ms = 20", "election_ticks = 2\nheartbeat_ticks = 2", "node.toml: timers.election_ticks: must be greater than timers.heartbeat_ticks"),
        ("tick_ms = 20", "tick_ms = 20\nremoval_timeout_secs = 99999999", "node.toml: timers.removal_timeout_secs: must be at most"),
        ("policies = [\"mock.toml\"]", "policies = []", "node.toml: policies: at least one"),
        ("network_id = \"test-net\"", "network_id = \"\"", "node.toml: network_id: must not be empty"),
        ("allow = [", "allow = [1, ", "node.toml: client.allow[0]: expected \"any\""),
        ("allow = [", "allow = [\"nope\", ", "node.toml: client.allow[0]: not a public key"),
        ("[client]", "[client]\noperators = [\"nope\"]", "node.toml: client.operators[0]: not a public key"),
        ("[client]", "[client]\noperators = \"any\"", "node.toml: client.operators: expected a list of operator public keys"),
    ];
    for (from, to, want) in bad {
        let to = to.replace("KEY", &key_hex());
        let text = good().replacen(from, &to, 1);
        assert_ne!(text, good(), "{from} not in the good config");
        let e = error_of(&text);
        assert!(e.contains(want), "want {want:?} in {e:?}");
    }
    let e = error_of(&good().replace("allow = [", "allow = \"all\" #["));
    assert!(
        e.contains("node.toml: client.allow: expected \"any\""),
        "{e}"
    );
    let e = error_of(&good().replace("tick_ms = 20", "tick_ms = \"fast\""));
    assert!(e.contains("tick_ms") && e.contains("invalid type"), "{e}");
}

#[test]
fn a_bootstrap_peer_may_be_named_by_its_address_alone() {
    let text = good().replace(
        "bootstrap = [",
        "bootstrap = [\"10.0.0.9:7001\", \"[::1]:7004\", ",
    );
    let c = parse(&text).expect("config");
    assert_eq!(c.bootstrap.len(), 1, "the one named by id");
    assert_eq!(
        c.bootstrap_addresses,
        vec![
            "10.0.0.9:7001".parse::<SocketAddr>().expect("addr"),
            "[::1]:7004".parse().expect("addr")
        ]
    );
}

#[test]
fn the_sample_config_is_valid() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/node-mock.toml");
    let c = NodeConfig::load(&file).expect("config/node-mock.toml");
    assert_eq!(c.bootstrap.len(), 2);
    assert_eq!(c.attestation, AttestationMode::Mock);
    assert_eq!(c.client, ClientAllow::Any);
    assert_eq!(c.load_policies().expect("its policy").len(), 1);
}

/// `[mock]` changes the mock quotes (intruders for the container tests), only with
/// `attestation = "mock"`, and names the field it refuses.
#[test]
fn mock_switches_parse_only_with_mock_attestation() {
    let mr_td = "ab".repeat(48);
    let seed = "cd".repeat(32);
    let c = parse(&format!(
        "{}\n[mock]\nmr_td = \"{mr_td}\"\npki_seed = \"{seed}\"\n",
        good()
    ))
    .expect("mock switches");
    assert_eq!(c.mock.mr_td, Some([0xab; 48]));
    assert_eq!(c.mock.pki_seed, Some([0xcd; 32]));
    assert_eq!(parse(&good()).expect("good").mock, MockOverrides::default());
    for (extra, want) in [
        (
            "mr_td = \"abcd\"",
            "mock.mr_td: expected 48 bytes (96 hex digits), got 2",
        ),
        ("pki_seed = \"xyz\"", "mock.pki_seed: not hex"),
        ("mrtd = \"ab\"", "unknown field `mrtd`"),
    ] {
        let err = error_of(&format!("{}\n[mock]\n{extra}\n", good()));
        assert!(err.contains(want), "{extra}: {err}");
    }
    let tdx = good()
        .replace(
            "attestation = \"mock\"",
            "attestation = \"tdx\"\npccs_url = \"https://p.local\"",
        )
        .replace("group_key_file = \"group.key\"\n", "")
        + &format!(
            "\n[provision]\nallow = [\"{}\"]\n[mock]\nmr_td = \"{mr_td}\"\n",
            key_hex()
        );
    let err = error_of(&tdx);
    assert!(
        err.contains("mock: test switches of the mock provider: only with attestation = \"mock\""),
        "{err}"
    );
}

#[test]
fn rocksdb_is_accepted_by_the_schema() {
    let c = parse(&good().replace("\"memory\"", "\"rocksdb\"")).expect("config");
    assert_eq!(c.storage, StorageKind::RocksDb);
}

/// The collateral comes from one place; a PCCS needs an http(s) URL, and its settings
/// are bounded and refused without it, each error naming the field.
#[test]
fn the_collateral_comes_from_a_file_or_a_pccs() {
    let c = parse(&good()).expect("mock: neither");
    assert_eq!((c.collateral_file, c.pccs), (None, None));
    let c = parse(&format!(
        "pccs_url = \"https://pccs.local:8081/\"\n{}",
        good()
    ))
    .expect("pccs");
    assert_eq!(
        c.pccs,
        Some(PccsSettings {
            url: "https://pccs.local:8081/".into(),
            refresh_secs: 4 * 3600,
            fetch_timeout_secs: 30,
        })
    );
    let c = parse(&format!(
        "pccs_url = \"http://127.0.0.1:9\"\ncollateral_refresh_secs = 60\ncollateral_fetch_timeout_secs = 2\n{}",
        good()
    ))
    .expect("pccs with settings");
    assert_eq!(
        c.pccs.map(|p| (p.refresh_secs, p.fetch_timeout_secs)),
        Some((60, 2))
    );
    let tdx = |extra: &str| {
        good()
            .replace(
                "attestation = \"mock\"",
                &format!("attestation = \"tdx\"\n{extra}"),
            )
            .replace("group_key_file = \"group.key\"\n", "")
            + &format!("\n[provision]\nallow = [\"{}\"]\n", key_hex())
    };
    let c = parse(&tdx("pccs_url = \"https://api.trustedservices.intel.com\"")).expect("tdx, pcs");
    assert!(c.pccs.is_some());
    for (text, want) in [
        (tdx(""), "node.toml: collateral_file: required with attestation = \"tdx\": name a PCCS with pccs_url"),
        (
            tdx("pccs_url = \"https://p.local\"\ncollateral_file = \"c.json\""),
            "node.toml: pccs_url: given with collateral_file",
        ),
        (format!("pccs_url = \"pccs.local\"\n{}", good()), "node.toml: pccs_url: expected an http(s) URL"),
        (format!("pccs_url = \"ftp://pccs.local\"\n{}", good()), "node.toml: pccs_url: expected an http(s) URL with a host"),
        (format!("pccs_url = \"https://p.local/?x=1\"\n{}", good()), "node.toml: pccs_url: expected an http(s) URL with a host and no query"),
        (
            format!("collateral_refresh_secs = 60\n{}", good()),
            "node.toml: collateral_refresh_secs: only with pccs_url",
        ),
        (
            format!("collateral_fetch_timeout_secs = 5\n{}", good()),
            "node.toml: collateral_fetch_timeout_secs: only with pccs_url",
        ),
        (
            format!("pccs_url = \"https://p.local\"\ncollateral_refresh_secs = 59\n{}", good()),
            "node.toml: collateral_refresh_secs: must be in 60..=604800, got 59",
        ),
        (
            format!("pccs_url = \"https://p.local\"\ncollateral_fetch_timeout_secs = 0\n{}", good()),
            "node.toml: collateral_fetch_timeout_secs: must be in 1..=300, got 0",
        ),
    ] {
        let e = error_of(&text);
        assert!(e.contains(want), "want {want:?} in {e:?}");
    }
}

#[test]
fn bootstrap_expect_defaults_to_three_and_is_bounded() {
    let c = parse(&good()).expect("config");
    assert_eq!(c.bootstrap_expect, 3);
    let c = parse(&format!("bootstrap_expect = 5\n{}", good())).expect("config");
    assert_eq!(c.bootstrap_expect, 5);
    for bad in ["0", "65"] {
        let e = error_of(&format!("bootstrap_expect = {bad}\n{}", good()));
        assert!(
            e.contains("node.toml: bootstrap_expect: must be in 1..=64"),
            "{e}"
        );
    }
}

#[test]
fn relay_is_off_unless_configured_and_must_be_an_http_url() {
    assert_eq!(parse(&good()).expect("config").relay_url, None);
    let c = parse(&format!(
        "relay_url = \"https://relay.example.net\"\n{}",
        good()
    ))
    .expect("config");
    assert_eq!(
        c.relay_url.map(|u| u.to_string()),
        Some("https://relay.example.net/".to_string())
    );
    for bad in ["relay.example.net", "ftp://relay.example.net", "https://"] {
        let e = error_of(&format!("relay_url = {bad:?}\n{}", good()));
        assert!(
            e.contains("node.toml: relay_url: expected an http(s) URL"),
            "{bad}: {e}"
        );
    }
}

/// The config id covers node.toml and every policy it names (a change to either
/// changes it) and not the directory they are in (the host's copy and the TD's give the
/// same id).
#[test]
fn the_config_id_covers_the_config_and_its_policies_wherever_they_are() {
    let id_in = |dir: &Path, config: &str, policy: &str| {
        std::fs::write(dir.join("node.toml"), config).expect("config");
        std::fs::write(dir.join("mock.toml"), policy).expect("policy");
        NodeConfig::load(&dir.join("node.toml"))
            .expect("load")
            .config_id()
            .expect("id")
    };
    let (a, b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let policy = crate::cluster::MOCK_POLICY;
    let id = id_in(a.path(), &good(), policy);
    assert_eq!(id_in(b.path(), &good(), policy), id, "another directory");
    assert_ne!(
        id_in(
            b.path(),
            &good().replace("tick_ms = 20", "tick_ms = 21"),
            policy
        ),
        id,
        "another node.toml"
    );
    assert_ne!(
        id_in(
            b.path(),
            &good(),
            &policy.replace("max_quote_age_secs = 600", "max_quote_age_secs = 601")
        ),
        id,
        "another policy"
    );
    std::fs::remove_file(a.path().join("mock.toml")).expect("rm");
    let e = NodeConfig::load(&a.path().join("node.toml"))
        .expect("load")
        .config_id()
        .expect_err("a policy that cannot be read");
    assert!(e.to_string().contains("policies: "), "{e}");
}

/// A TD whose MRCONFIGID is not its config's id refuses to run that config.
#[test]
fn a_td_runs_only_the_config_its_quote_names() {
    use tessera_attestation::provider::mock::{MockConfig, MockProvider};
    use tessera_attestation::QuoteProvider;
    let quote_with = |mr_config_id: [u8; 48]| {
        let provider = MockProvider::new(MockConfig {
            mr_config_id,
            ..MockConfig::default()
        })
        .expect("mock");
        provider.quote(&[0u8; 64]).expect("quote").into_bytes()
    };
    let id = [0x5a; 48];
    check_config_id(&quote_with(id), &id).expect("the config the TD was started with");
    for other in [[0u8; 48], [0x5b; 48]] {
        let e = check_config_id(&quote_with(other), &id).expect_err("another config");
        assert!(
            matches!(e, ConfigIdError::Mismatch { measured, config_id }
                if measured == other && config_id == id),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(
            e.contains(&hex::encode(other)) && e.contains(&hex::encode(id)),
            "{e}"
        );
    }
    let e = check_config_id(b"not a quote", &id).expect_err("garbage");
    assert!(matches!(e, ConfigIdError::OwnQuote(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("cannot read this TD's own quote"), "{e}");
}

/// The group key comes from exactly one place: a file, or (required in a TD) the keys
/// allowed to provision it; every other combination is refused naming the field.
#[test]
fn the_group_key_comes_from_a_file_or_a_provisioner() {
    let provisioned = |allow: &str| {
        good().replace("group_key_file = \"group.key\"\n", "")
            + &format!("\n[provision]\nallow = {allow}\n")
    };
    let c = parse(&good()).expect("file");
    assert_eq!(
        c.group_key,
        GroupKeySource::File(PathBuf::from("/etc/tessera/group.key"))
    );
    let c = parse(&provisioned(&format!("[\"{}\"]", key_hex()))).expect("provisioned");
    match &c.group_key {
        GroupKeySource::Provisioned { allow } => assert_eq!(allow.len(), 1),
        other => panic!("expected a provisioned key, got {other:?}"),
    }
    assert!(c.group_key().expect("no file to read").is_none());
    let tdx = |text: String| {
        text.replace(
            "attestation = \"mock\"",
            "attestation = \"tdx\"\ncollateral_file = \"c.json\"",
        )
    };
    parse(&tdx(provisioned(&format!("[\"{}\"]", key_hex())))).expect("tdx, provisioned");
    for (text, want) in [
        (
            good() + &format!("\n[provision]\nallow = [\"{}\"]\n", key_hex()),
            "node.toml: provision: given with group_key_file",
        ),
        (
            good().replace("group_key_file = \"group.key\"\n", ""),
            "node.toml: group_key_file: missing",
        ),
        (provisioned("[]"), "node.toml: provision.allow: empty"),
        (provisioned("[\"nothex\"]"), "node.toml: provision.allow[0]"),
        (provisioned("\"any\""), "node.toml: "),
        (
            tdx(good()),
            "node.toml: group_key_file: refused with attestation = \"tdx\"",
        ),
    ] {
        let e = error_of(&text);
        assert!(e.contains(want), "want {want:?} in {e:?}");
    }
}

/// Item 7 of issue 13: a key file is refused with `tdx` attestation and with memory
/// storage, naming the field and the one it clashes with; the combinations that keep
/// the model (mock + rocksdb + key file, memory without a key file) still parse.
#[test]
fn key_files_are_refused_where_they_break_the_model() {
    let with = |attestation: &str, storage: &str, key: bool| {
        let key = if key {
            "secret_key_file = \"node.key\"\n"
        } else {
            ""
        };
        good()
            .replace("attestation = \"mock\"", attestation)
            .replace(
                "storage = \"memory\"",
                &format!("storage = {storage:?}\n{key}"),
            )
    };
    let tdx = "attestation = \"tdx\"\ncollateral_file = \"c.json\"";
    // With tdx the group key is provisioned, never read from a file.
    let with = |attestation: &str, storage: &str, key: bool| {
        let text = with(attestation, storage, key);
        if attestation == tdx {
            text.replace("group_key_file = \"group.key\"\n", "")
                + &format!("\n[provision]\nallow = [\"{}\"]\n", key_hex())
        } else {
            text
        }
    };
    let refused = [
        (
            with(tdx, "rocksdb", true),
            "node.toml: secret_key_file: refused with attestation = \"tdx\"",
        ),
        (
            with(tdx, "memory", true),
            "node.toml: secret_key_file: refused with attestation = \"tdx\"",
        ),
        (
            with("attestation = \"mock\"", "memory", true),
            "node.toml: secret_key_file: refused with storage = \"memory\"",
        ),
    ];
    for (text, want) in refused {
        let e = error_of(&text);
        assert!(e.contains(want), "want {want:?} in {e:?}");
    }
    let c = parse(&with("attestation = \"mock\"", "rocksdb", true)).expect("mock, durable");
    assert_eq!(
        c.secret_key_file,
        Some(PathBuf::from("/etc/tessera/node.key"))
    );
    let c = parse(&with("attestation = \"mock\"", "memory", false)).expect("fresh key");
    assert_eq!((c.storage, c.secret_key_file), (StorageKind::Memory, None));
    let c = parse(&with(tdx, "rocksdb", false)).expect("tdx without a key file");
    assert_eq!(c.attestation, AttestationMode::Tdx);
}

#[test]
fn storage_is_durable_unless_memory_is_asked_for() {
    let text: String = good()
        .lines()
        .filter(|l| !l.starts_with("storage ="))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(parse(&text).expect("config").storage, StorageKind::RocksDb);
}

#[test]
fn peers_parse_and_misparse() {
    let k = key_hex();
    let p = parse_peer(&format!("{k}@[::1]:9")).expect("v6 peer");
    assert_eq!(p.id.to_string(), k);
    assert!(matches!(
        parse_peer(KEY_A),
        Err(ParsePeerError::MissingAt { .. })
    ));
    assert!(matches!(
        parse_peer(&format!("{k}@127.0.0.1")),
        Err(ParsePeerError::Address { .. })
    ));
    assert!(matches!(
        parse_peer(&format!("{k}127.0.0.1:9")),
        Err(ParsePeerError::MissingAt { .. })
    ));
    assert!(matches!(
        parse_peer("@127.0.0.1:9"),
        Err(ParsePeerError::NodeId { .. })
    ));
}

#[cfg(unix)]
#[test]
fn key_files_must_hold_a_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.key");
    assert!(
        matches!(
            read_secret_key(&path),
            Err(SecretKeyError::File(FileError::Io { .. }))
        ),
        "a missing file"
    );
    write_private_file(&path, "xyz").expect("write");
    let e = read_secret_key(&path).expect_err("not hex");
    assert!(matches!(e, SecretKeyError::NotHex { .. }), "{e:?}");
    assert!(
        e.to_string().starts_with(&path.display().to_string()),
        "{e}"
    );
    let short = dir.path().join("short.key");
    write_private_file(&short, &hex::encode([7u8; 16])).expect("write");
    assert!(matches!(
        read_secret_key(&short),
        Err(SecretKeyError::Length { bytes: 16, .. })
    ));
}

#[test]
fn node_names_parse_and_misparse() {
    let k = key_hex();
    assert!(matches!(
        parse_node("127.0.0.1:9"),
        Ok(NodeName::Address(a)) if a.port() == 9
    ));
    assert!(matches!(
        parse_node(&format!("{k}@127.0.0.1:9")),
        Ok(NodeName::Id(p)) if p.id.to_string() == k
    ));
    let e = parse_node("localhost:9").expect_err("a host name is not an address");
    assert!(matches!(e, ParseNodeError::Unrecognized { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "expected <node id>@<ip:port> or <ip:port>, got \"localhost:9\""
    );
    let e = parse_node("abc@127.0.0.1:9").expect_err("not a node id");
    assert!(
        matches!(e, ParseNodeError::Peer(ParsePeerError::NodeId { .. })),
        "{e:?}"
    );
}

#[cfg(unix)]
#[test]
fn key_files_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = SecretKey::from_bytes(&[5; 32]);
    let node_key = dir.path().join("node.key");
    write_secret_key(&node_key, &secret).expect("write");
    let mode = std::fs::metadata(&node_key)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        read_secret_key(&node_key).expect("read").public(),
        secret.public()
    );
    assert!(
        write_secret_key(&node_key, &secret).is_err(),
        "an existing key file is never overwritten"
    );

    let group_key = dir.path().join("group.key");
    write_private_file(&group_key, &hex::encode([1u8; 32])).expect("write");
    let text = good()
        .replace("group.key", &group_key.display().to_string())
        .replace(
            "storage = \"memory\"",
            &format!(
                "storage = \"rocksdb\"\nsecret_key_file = {:?}",
                node_key.display().to_string()
            ),
        );
    let c = parse(&text).expect("config");
    assert_eq!(
        c.group_key().expect("group key"),
        Some(GroupKey::from_bytes([1; 32]))
    );
    assert_eq!(
        c.secret_key().expect("secret").map(|k| k.public()),
        Some(secret.public())
    );

    std::fs::set_permissions(&group_key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = c
        .group_key()
        .expect_err("world-readable group key")
        .to_string();
    assert!(
        e.contains("node.toml: group_key_file: ") && e.contains("chmod 600"),
        "{e}"
    );
    std::fs::set_permissions(&node_key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let e = c
        .secret_key()
        .expect_err("group-readable secret key")
        .to_string();
    assert!(
        e.contains("node.toml: secret_key_file: ") && e.contains("chmod 600"),
        "{e}"
    );
    assert!(
        matches!(
            read_secret_key(&node_key),
            Err(SecretKeyError::File(FileError::NotPrivate {
                mode: 0o640,
                ..
            }))
        ),
        "the key file's mode is named"
    );
}

#[test]
fn policies_must_match_the_attestation_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mock = dir.path().join("mock.toml");
    std::fs::write(&mock, crate::cluster::MOCK_POLICY).expect("write policy");
    let c = NodeConfig::from_toml_str(&good(), &dir.path().join("node.toml")).expect("config");
    assert_eq!(c.load_policies().expect("policies").len(), 1);
    c.validator().expect("one mock validator");

    let two = good().replace("[\"mock.toml\"]", "[\"mock.toml\", \"mock.toml\"]");
    let c = NodeConfig::from_toml_str(&two, &dir.path().join("node.toml")).expect("config");
    let single = NodeConfig::from_toml_str(&good(), &dir.path().join("node.toml"))
        .expect("config")
        .validator()
        .expect("validator");
    assert_ne!(
        c.validator().expect("any-of").signature(),
        single.signature(),
        "AnyOf covers both alternatives"
    );

    let tdx = good()
        .replace(
            "attestation = \"mock\"",
            "attestation = \"tdx\"\ncollateral_file = \"c.json\"",
        )
        .replace("group_key_file = \"group.key\"\n", "")
        + &format!("\n[provision]\nallow = [\"{}\"]\n", key_hex());
    let c = NodeConfig::from_toml_str(&tdx, &dir.path().join("node.toml")).expect("config");
    let e = c
        .validator()
        .err()
        .expect("mock root refused with tdx")
        .to_string();
    assert!(e.contains("policies[0]") && e.contains("mock root"), "{e}");

    let missing = good().replace("mock.toml", "absent.toml");
    let c = NodeConfig::from_toml_str(&missing, &dir.path().join("node.toml")).expect("config");
    let e = c.validator().err().expect("missing policy").to_string();
    assert!(
        e.contains("policies[0]") && e.contains("absent.toml"),
        "{e}"
    );
}
