//! A client checks the node it dialled before it sends anything of its own
//! ([`NodeTrust::Verify`]): the node must present tickets the client's policy accepts, bound
//! to the key the connection authenticated.
//!
//! The node here is a stand-in on loopback that answers the attestation request with
//! tickets chosen by the test (its own, another node's, another image's, none) and records
//! every request it receives, so each test can assert that a refused node saw nothing but
//! the attestation request.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iroh::{Endpoint, EndpointAddr, SecretKey};
use tessera::client::{Client, ClientError, ClientRequest, ClientResponse, NodeTrust};
use tessera::cluster::{mock_validator, random_secret, MOCK_POLICY};
use tessera::machine::{KvCommand, KvOutput};
use tessera::net::bound_addr;
use tessera::net::{local_endpoint, read_message, write_message, Listen, ALPN_CLIENT};
use tessera::tickets::{clock_from, MockTdxValidator, TdxTicketIssuer, Ticket, TicketValidator};
use tessera_attestation::provider::mock::{MockConfig, MockProvider};
use tessera_attestation::Policy;

const NETWORK: &str = "client-trust-test";
const DEADLINE: Duration = Duration::from_secs(30);

/// Tickets from the mock provider with `mock`'s measurements, bound to `key`.
fn tickets_for(mock: MockConfig, key: [u8; 32]) -> Vec<Ticket> {
    let now = mock.valid_now();
    let provider = MockProvider::new(mock).expect("mock provider");
    let collateral = provider.collateral().expect("collateral");
    let issuer = TdxTicketIssuer::new(Box::new(provider), collateral, NETWORK.into(), 300);
    vec![issuer.issue(key, None, now).expect("ticket")]
}

/// What the stand-in node answers to the attestation request, and what it received.
struct StandIn {
    addr: EndpointAddr,
    endpoint: Endpoint,
    received: Arc<Mutex<Vec<ClientRequest>>>,
}

/// A node on loopback with key `secret` that answers `Attestation` with `tickets` and
/// every command with `Put`.
async fn stand_in(secret: SecretKey, tickets: Vec<Ticket>) -> StandIn {
    let endpoint = local_endpoint(
        secret,
        &Listen {
            bind: "127.0.0.1:0".parse().expect("addr"),
            alpns: vec![ALPN_CLIENT.to_vec()],
            relay: None,
        },
    )
    .await
    .expect("endpoint");
    let addr = EndpointAddr::new(endpoint.id())
        .with_ip_addr(bound_addr(&endpoint).expect("a bound address"));
    let received = Arc::new(Mutex::new(Vec::new()));
    let (ep, log) = (endpoint.clone(), received.clone());
    let now = MockConfig::default().valid_now();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let (log, tickets) = (log.clone(), tickets.clone());
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let Ok(request) = read_message::<_, ClientRequest>(&mut recv, "request").await
                    else {
                        return;
                    };
                    log.lock().expect("log").push(request.clone());
                    let answer = match request {
                        ClientRequest::Attestation => ClientResponse::Attestation {
                            network_id: NETWORK.into(),
                            tickets: tickets.clone(),
                            now,
                        },
                        ClientRequest::Execute { .. } => ClientResponse::Executed(KvOutput::Put),
                        _ => ClientResponse::Error("not served here".into()),
                    };
                    let _ = write_message(&mut send, &answer).await;
                    let _ = send.finish();
                }
            });
        }
    });
    StandIn {
        addr,
        endpoint,
        received,
    }
}

fn verify_with(validator: Arc<dyn TicketValidator>, network_id: Option<&str>) -> NodeTrust {
    NodeTrust::Verify {
        validator,
        network_id: network_id.map(String::from),
        clock: Some(clock_from(MockConfig::default().valid_now())),
    }
}

fn put() -> KvCommand {
    KvCommand::Put {
        key: b"secret".to_vec(),
        value: b"for attested nodes only".to_vec(),
    }
}

/// Connects with `trust` to a stand-in presenting `tickets`; returns the outcome and what
/// the stand-in received (after a put, when the connection was accepted).
async fn attempt(
    secret: SecretKey,
    tickets: Vec<Ticket>,
    trust: NodeTrust,
) -> (Result<(), ClientError>, Vec<ClientRequest>) {
    let node = stand_in(secret, tickets).await;
    let client_key = random_secret().expect("key");
    let result = tokio::time::timeout(DEADLINE, async {
        let mut client = Client::connect(node.addr.clone(), client_key, trust).await?;
        client.execute(put(), DEADLINE).await?;
        client.close().await;
        Ok::<_, ClientError>(())
    })
    .await
    .expect("an outcome in time");
    let received = node.received.lock().expect("log").clone();
    node.endpoint.close().await;
    (result, received)
}

fn assert_refused_having_sent_nothing(
    what: &str,
    (result, received): (Result<(), ClientError>, Vec<ClientRequest>),
    reason: &str,
) {
    match result {
        Err(ClientError::NotAttested { reason: why, .. }) => {
            assert!(
                why.contains(reason),
                "{what}: refused for {why:?}, not {reason:?}"
            )
        }
        other => panic!("{what}: must be refused as not attested, got {other:?}"),
    }
    assert_eq!(
        received,
        vec![ClientRequest::Attestation],
        "{what}: the node saw more than the attestation request"
    );
}

#[tokio::test]
async fn a_node_with_tickets_for_its_own_key_is_served() {
    let secret = random_secret().expect("key");
    let tickets = tickets_for(MockConfig::default(), *secret.public().as_bytes());
    let trust = verify_with(mock_validator().expect("validator"), Some(NETWORK));
    let (result, received) = attempt(secret, tickets, trust).await;
    result.expect("a genuine node is served");
    assert_eq!(
        received.len(),
        2,
        "attestation, then the command: {received:?}"
    );
}

/// The host's impostor: it cannot get a quote bound to its own key, so it relays the
/// genuine node's tickets (bound to the genuine key).
#[tokio::test]
async fn an_impostor_relaying_a_genuine_nodes_tickets_gets_nothing() {
    let genuine = random_secret().expect("key");
    let tickets = tickets_for(MockConfig::default(), *genuine.public().as_bytes());
    let trust = verify_with(mock_validator().expect("validator"), None);
    let outcome = attempt(random_secret().expect("key"), tickets, trust).await;
    assert_refused_having_sent_nothing("relayed tickets", outcome, "binding_peer_key");
}

#[tokio::test]
async fn a_node_running_another_image_gets_nothing() {
    let secret = random_secret().expect("key");
    let other = MockConfig::default().with_mr_td([0xab; 48]);
    let tickets = tickets_for(other, *secret.public().as_bytes());
    let trust = verify_with(mock_validator().expect("validator"), None);
    let outcome = attempt(secret, tickets, trust).await;
    assert_refused_having_sent_nothing("another image", outcome, "rejected");
}

#[tokio::test]
async fn a_node_with_no_tickets_or_of_another_network_gets_nothing() {
    let secret = random_secret().expect("key");
    let trust = verify_with(mock_validator().expect("validator"), None);
    let outcome = attempt(secret.clone(), Vec::new(), trust).await;
    assert_refused_having_sent_nothing("no tickets", outcome, "no tdx ticket");

    let tickets = tickets_for(MockConfig::default(), *secret.public().as_bytes());
    let trust = verify_with(
        mock_validator().expect("validator"),
        Some("another-network"),
    );
    let outcome = attempt(secret, tickets, trust).await;
    assert_refused_having_sent_nothing("another network", outcome, "another-network");
}

/// A policy for another image refuses a node whose tickets are otherwise sound.
#[tokio::test]
async fn a_policy_for_another_image_refuses_a_genuine_node() {
    let secret = random_secret().expect("key");
    let tickets = tickets_for(MockConfig::default(), *secret.public().as_bytes());
    let mr_td = "6cb1c262a0f23144e19cfc8e2525aab9e31c16182aa342ad43d60ce499b49cedd4a7a761bbc286fd793f91a837b0027a";
    let other = MOCK_POLICY.replace(mr_td, &"cd".repeat(48));
    assert_ne!(other, MOCK_POLICY, "the mock policy pins this MRTD");
    let policy = Policy::from_toml_str(&other).expect("policy");
    let validator = Arc::new(MockTdxValidator::new(policy).expect("validator"));
    let outcome = attempt(secret, tickets, verify_with(validator, None)).await;
    assert_refused_having_sent_nothing("another policy", outcome, "rejected");
}

#[tokio::test]
async fn insecure_skips_the_check_by_name() {
    let (result, received) = attempt(
        random_secret().expect("key"),
        Vec::new(),
        NodeTrust::Insecure,
    )
    .await;
    result.expect("--insecure talks to anyone");
    assert!(
        !received.contains(&ClientRequest::Attestation),
        "no attestation asked: {received:?}"
    );
}
