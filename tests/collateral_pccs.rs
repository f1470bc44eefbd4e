//! Collateral refresh against a PCCS on loopback that each test starts itself
//! (`pccs_server`), serving the real test vectors' collateral or the mock PKI's, at fixed
//! times: a fetch installs a bundle; an outage, a stale answer, a bad signature, a slow
//! server and an oversized answer each leave the last good bundle in place and are counted
//! by reason; the on-disk cache carries a restart through an outage and a tampered cache
//! file is refused.
//!
//! Synchronisation is on the fetch's own result (each test awaits `refresh_once`); the
//! slow server is bounded by the client's configured timeout, never by a sleep.
mod pccs_server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pccs_server::{Behaviour, PccsServer};
use tessera::collateral::{
    cache, FetchError, Outcome, PccsClient, PccsRefresh, RefreshSettings, Refusal, StartError,
};
use tessera_attestation::pccs::{PccsError, PccsItem, PCCS_ANSWER_BYTES_MAX};
use tessera_attestation::provider::mock::{MockConfig, MockProvider};
use tessera_attestation::{Collateral, Policy, ProviderError, ProviderKind, Quote, QuoteProvider};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/tdx/");
const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/");
/// Inside every validity window of quote_uptodate's collateral (attestation/tests/common).
const UPTODATE_NOW: u64 = 1_752_919_234;
const TIMEOUT: Duration = Duration::from_secs(10);

/// A TD that always presents the same quote (a real vector cannot be re-quoted).
struct FixedQuote(Vec<u8>);

impl QuoteProvider for FixedQuote {
    fn quote(&self, _report_data: &[u8; 64]) -> Result<Quote, ProviderError> {
        Ok(Quote::from_bytes(self.0.clone()))
    }
    fn kind(&self) -> ProviderKind {
        ProviderKind::Tdx
    }
}

fn policy(name: &str) -> Policy {
    let text = std::fs::read_to_string(format!("{POLICIES}{name}")).expect("policy file");
    Policy::from_toml_str(&text).expect("policy")
}

fn vector_collateral(name: &str) -> Collateral {
    let bytes = std::fs::read(format!("{VECTORS}{name}.collateral.json")).expect("vector");
    Collateral::from_json(&bytes).expect("vector collateral")
}

fn refresh(
    server: &str,
    timeout: Duration,
    provider: Arc<dyn QuoteProvider + Send + Sync>,
    policy: Policy,
    cache: Option<PathBuf>,
) -> PccsRefresh {
    PccsRefresh::new(
        PccsClient::new(server, timeout).expect("client"),
        RefreshSettings::every(4 * 3600),
        vec![policy],
        provider,
        cache,
    )
}

/// The mock TD (default config), its policy, a time inside its collateral's window, and
/// bundles of its PKI by TCB evaluation data number.
struct Mock {
    provider: Arc<MockProvider>,
    now: u64,
    /// Bundles of evaluation data number 17 and 18, made once: signing is randomised, so
    /// two makings of "the same" bundle differ in their signature bytes.
    bundles: [Collateral; 2],
}

impl Mock {
    fn new() -> Mock {
        let config = MockConfig::default();
        let bundle = |eval| {
            let config = config.clone().with_eval(eval, config.collateral_issued_at);
            MockProvider::new(config)
                .expect("mock")
                .collateral()
                .expect("collateral")
        };
        Mock {
            provider: Arc::new(MockProvider::new(config.clone()).expect("mock")),
            now: config.valid_now(),
            bundles: [bundle(17), bundle(18)],
        }
    }

    fn bundle(&self, eval: u32) -> Collateral {
        match eval {
            17 => self.bundles[0].clone(),
            18 => self.bundles[1].clone(),
            other => panic!("no bundle {other}"),
        }
    }

    fn refresh(&self, server: &PccsServer, cache: Option<&Path>) -> PccsRefresh {
        refresh(
            &server.url,
            TIMEOUT,
            self.provider.clone(),
            policy("mock.toml"),
            cache.map(Path::to_path_buf),
        )
    }
}

/// The bundle without the PCK chain the client adds from the quote (a mock bundle has
/// none), to compare with what was served.
fn served(mut c: Collateral) -> Collateral {
    c.as_dcap_mut().pck_certificate_chain = None;
    c
}

fn current(r: &PccsRefresh) -> Option<Collateral> {
    r.shared().map(|s| served((*s.current()).clone()))
}

fn cached(path: &Path) -> Option<Collateral> {
    cache::read(path).expect("read the cache").map(served)
}

/// (a) The real up-to-date vector's collateral, served by a PCCS, comes back item for item
/// and is installed: it verifies the vector quote under the example policy.
#[tokio::test]
async fn a_fetch_from_a_pccs_installs_the_real_collateral() {
    let served = vector_collateral("quote_uptodate");
    let server = PccsServer::start(Behaviour::Serve(Box::new(served.clone()))).await;
    let quote = std::fs::read(format!("{VECTORS}quote_uptodate.bin")).expect("quote");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r = refresh(
        &server.url,
        TIMEOUT,
        Arc::new(FixedQuote(quote)),
        policy("example.toml"),
        Some(cache::path_in(dir.path())),
    );
    let shared = r.start(UPTODATE_NOW).await.expect("first fetch");
    let got = shared.current();
    let (g, s) = (got.as_dcap(), served.as_dcap());
    assert_eq!(g.tcb_info, s.tcb_info, "the exact signed bytes");
    assert_eq!(g.qe_identity, s.qe_identity);
    assert_eq!(g.tcb_info_signature, s.tcb_info_signature);
    assert_eq!(g.pck_crl, s.pck_crl);
    assert_eq!(g.root_ca_crl, s.root_ca_crl);
    assert_eq!(g.pck_crl_issuer_chain, s.pck_crl_issuer_chain);
    assert!(g.pck_certificate_chain.is_some(), "kept for offline checks");
    assert_eq!(server.requests(), 4, "pckcrl, tcb, qe/identity, rootcacrl");
    let status = r.status().borrow().clone();
    assert_eq!(status.fetches_ok, 1);
    assert!(status.fetch_failures.is_empty());
    assert!(status.issued_at.is_some_and(|t| t < UPTODATE_NOW));
    assert_eq!(
        cache::read(&cache::path_in(dir.path())).expect("cache"),
        Some((*got).clone()),
        "the installed bundle is cached"
    );
}

/// (a') The same with the mock PKI, and a newer bundle on the next fetch replaces it.
#[tokio::test]
async fn a_newer_bundle_replaces_the_current_one() {
    let mock = Mock::new();
    let server = PccsServer::start(Behaviour::Serve(Box::new(mock.bundle(17)))).await;
    let mut r = mock.refresh(&server, None);
    r.start(mock.now).await.expect("first fetch");
    server.set(Behaviour::Serve(Box::new(mock.bundle(18))));
    match r.refresh_once(mock.now + 60).await {
        Outcome::Installed {
            replaced: Some(old),
        } => assert_eq!(served(old.collateral), mock.bundle(17)),
        other => panic!("expected the newer bundle installed, got {other:?}"),
    }
    assert_eq!(current(&r), Some(mock.bundle(18)));
    assert_eq!(r.refresh_once(mock.now + 120).await, Outcome::Unchanged);
    assert_eq!(r.status().borrow().fetches_ok, 3);
}

/// (b) An outage, as a 500 and as a refused connection, keeps the last good bundle and is
/// counted by reason.
#[tokio::test]
async fn an_outage_keeps_the_last_good_bundle_and_is_reported() {
    let mock = Mock::new();
    let server = PccsServer::start(Behaviour::Serve(Box::new(mock.bundle(17)))).await;
    let mut r = mock.refresh(&server, None);
    r.start(mock.now).await.expect("first fetch");
    server.set(Behaviour::Status(500));
    match r.refresh_once(mock.now + 60).await {
        Outcome::Refused(Refusal::Fetch(FetchError::Pccs(PccsError::Status {
            item: PccsItem::PckCrl,
            status: 500,
        }))) => {}
        other => panic!("expected HTTP 500, got {other:?}"),
    }
    assert_eq!(
        current(&r),
        Some(mock.bundle(17)),
        "the last good one stays"
    );
    let status = r.status().borrow().clone();
    assert_eq!(status.fetch_failures.get("http_status"), Some(&1));
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("HTTP 500"),
        "{status:?}"
    );

    // Nothing listens on a port just released: connection refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    let mut down = refresh(
        &closed,
        TIMEOUT,
        mock.provider.clone(),
        policy("mock.toml"),
        None,
    );
    match down.refresh_once(mock.now).await {
        Outcome::Refused(Refusal::Fetch(FetchError::Transport { url, .. })) => {
            assert!(url.starts_with(&closed), "{url}")
        }
        other => panic!("expected a refused connection, got {other:?}"),
    }
    assert_eq!(
        down.status().borrow().fetch_failures.get("transport"),
        Some(&1)
    );
    // With no bundle at all the node cannot start, and says why.
    let e = down
        .start(mock.now)
        .await
        .expect_err("nothing to start with");
    let StartError::NoCollateral { url, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(url, &closed);
}

/// (c) A PCCS answering with older collateral than the current (a stale cache, or a
/// rollback) is not followed.
#[tokio::test]
async fn a_stale_answer_is_not_installed() {
    let mock = Mock::new();
    let server = PccsServer::start(Behaviour::Serve(Box::new(mock.bundle(18)))).await;
    let mut r = mock.refresh(&server, None);
    r.start(mock.now).await.expect("first fetch");
    server.set(Behaviour::Serve(Box::new(mock.bundle(17))));
    match r.refresh_once(mock.now + 60).await {
        Outcome::Refused(Refusal::Older(e)) => {
            assert!(e.to_string().contains("TCB Info"), "{e}")
        }
        other => panic!("expected the stale bundle refused, got {other:?}"),
    }
    assert_eq!(current(&r), Some(mock.bundle(18)));
    assert_eq!(r.status().borrow().fetch_failures.get("older"), Some(&1));
}

/// (d) Collateral whose signature does not verify is not installed: the real vector with
/// one bit of its TCB Info signature flipped, and the mock's.
#[tokio::test]
async fn a_bad_signature_is_not_installed() {
    let mut forged = vector_collateral("quote_uptodate");
    forged.as_dcap_mut().tcb_info_signature[0] ^= 1;
    let server = PccsServer::start(Behaviour::Serve(Box::new(forged))).await;
    let quote = std::fs::read(format!("{VECTORS}quote_uptodate.bin")).expect("quote");
    let mut r = refresh(
        &server.url,
        TIMEOUT,
        Arc::new(FixedQuote(quote)),
        policy("example.toml"),
        None,
    );
    match r.refresh_once(UPTODATE_NOW).await {
        Outcome::Refused(Refusal::Unverified(e)) => {
            assert!(e.to_string().to_lowercase().contains("tcb"), "{e}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(r.shared().is_none(), "nothing installed");

    let mock = Mock::new();
    let server = PccsServer::start(Behaviour::Serve(Box::new(mock.bundle(17)))).await;
    let mut r = mock.refresh(&server, None);
    r.start(mock.now).await.expect("first fetch");
    let mut bad = mock.bundle(18);
    bad.as_dcap_mut().qe_identity_signature[3] ^= 0x40;
    server.set(Behaviour::Serve(Box::new(bad)));
    let out = r.refresh_once(mock.now + 60).await;
    assert!(
        matches!(out, Outcome::Refused(Refusal::Unverified(_))),
        "{out:?}"
    );
    assert_eq!(current(&r), Some(mock.bundle(17)));
    assert_eq!(
        r.status().borrow().fetch_failures.get("unverified"),
        Some(&1)
    );
}

/// (e) A server that accepts and never answers is given up on after the configured
/// timeout; an oversized answer is cut off at the bound. The last good bundle stays.
#[tokio::test]
async fn a_slow_or_oversized_answer_is_cut_off() {
    let mock = Mock::new();
    let server = PccsServer::start(Behaviour::Serve(Box::new(mock.bundle(17)))).await;
    let short = Duration::from_millis(300);
    let mut r = refresh(
        &server.url,
        short,
        mock.provider.clone(),
        policy("mock.toml"),
        None,
    );
    r.start(mock.now).await.expect("first fetch");
    server.set(Behaviour::Silent);
    match r.refresh_once(mock.now + 60).await {
        Outcome::Refused(Refusal::Fetch(FetchError::Timeout { timeout_ms, .. })) => {
            assert_eq!(timeout_ms, 300)
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(current(&r), Some(mock.bundle(17)));
    server.set(Behaviour::Huge(PCCS_ANSWER_BYTES_MAX + 1));
    match r.refresh_once(mock.now + 120).await {
        Outcome::Refused(Refusal::Fetch(FetchError::TooLarge { limit, .. })) => {
            assert_eq!(limit, PCCS_ANSWER_BYTES_MAX)
        }
        other => panic!("expected an oversized answer refused, got {other:?}"),
    }
    let status = r.status().borrow().clone();
    assert_eq!(status.fetch_failures.get("timeout"), Some(&1));
    assert_eq!(status.fetch_failures.get("too_large"), Some(&1));
    assert_eq!(current(&r), Some(mock.bundle(17)));
}

/// (f) A node restarted during an outage starts from its cache (verified again, no fetch
/// needed); a tampered cache file is refused, and with the PCCS down too the node has
/// nothing to start with.
#[tokio::test]
async fn the_cache_carries_a_restart_through_an_outage_and_a_tampered_one_is_refused() {
    let mock = Mock::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = cache::path_in(dir.path());
    let server = PccsServer::start(Behaviour::Serve(Box::new(mock.bundle(18)))).await;
    mock.refresh(&server, Some(&path))
        .start(mock.now)
        .await
        .expect("first fetch");

    server.set(Behaviour::Status(503));
    let requests = server.requests();
    let mut restarted = mock.refresh(&server, Some(&path));
    let shared = restarted
        .start(mock.now + 3600)
        .await
        .expect("from the cache");
    assert_eq!(served((*shared.current()).clone()), mock.bundle(18));
    assert_eq!(
        server.requests(),
        requests,
        "the cache stands in for the first fetch"
    );
    assert_eq!(
        restarted.refresher().next_fetch_at(),
        0,
        "a fetch is still due at once"
    );
    // Still refreshed from the PCCS, which is down: the cached bundle stays.
    let out = restarted.refresh_once(mock.now + 3600).await;
    assert!(
        matches!(out, Outcome::Refused(Refusal::Fetch(_))),
        "{out:?}"
    );
    assert_eq!(current(&restarted), Some(mock.bundle(18)));

    // The host edits the file: re-verified at start, refused.
    let mut tampered = cache::read(&path).expect("read").expect("cached");
    tampered.as_dcap_mut().tcb_info = tampered.as_dcap().tcb_info.replace("18", "99");
    cache::write(&path, &tampered).expect("tamper");
    let mut fooled = mock.refresh(&server, Some(&path));
    let e = fooled
        .start(mock.now + 3600)
        .await
        .expect_err("refused cache, PCCS down");
    let StartError::NoCollateral { cache: note, .. } = &e else {
        panic!("{e}")
    };
    assert!(note.contains("refused"), "{e}");
    // A cache holding older collateral than a fetch brings is simply replaced.
    cache::write(&path, &mock.bundle(17)).expect("older cache");
    server.set(Behaviour::Serve(Box::new(mock.bundle(18))));
    let mut caught_up = mock.refresh(&server, Some(&path));
    caught_up.start(mock.now).await.expect("from the cache");
    assert_eq!(current(&caught_up), Some(mock.bundle(17)));
    let out = caught_up.refresh_once(mock.now).await;
    assert!(matches!(out, Outcome::Installed { .. }), "{out:?}");
    assert_eq!(cached(&path), Some(mock.bundle(18)));
}
