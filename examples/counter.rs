//! A replicated counter in two groups that share two iroh endpoints, with mock attestation
//! (`cargo run --example counter`). Each endpoint has one `Groups` gateway on its router;
//! both nodes join groups "one" and "two" with each other as peers, so each group founds
//! itself once both members are bonded and agree.
use tessera::cluster::{mock_clock, mock_issuer, mock_validator, random_secret, NETWORK};
use tessera::groups::{Consistency, GroupKey, Groups, GroupsConfig};
use tessera::machine::{ApplyContext, SnapshotError, StateMachine};

/// The state machine: a number that commands add to.
#[derive(Default)]
struct Counter(u64);

impl StateMachine for Counter {
    type Command = u64;
    type Output = u64;
    type Query = ();
    type QueryResult = u64;

    fn signature(&self) -> [u8; 32] {
        *b"tessera/example/counter/v1......"
    }
    fn apply(&mut self, add: u64, _: &ApplyContext) -> u64 {
        self.0 = self.0.saturating_add(add);
        self.0
    }
    fn query(&self, _: &()) -> u64 {
        self.0
    }
    fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        Ok(self.0.to_le_bytes().to_vec())
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        let reason = format!("{} bytes, a counter has 8", bytes.len());
        let bytes = bytes
            .try_into()
            .map_err(|_| SnapshotError::Decode { reason })?;
        self.0 = u64::from_le_bytes(bytes);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let clock = mock_clock();
    let a = tessera::cluster::loopback_endpoint(random_secret()?).await?;
    let b = tessera::cluster::loopback_endpoint(random_secret()?).await?;
    let mut nodes = Vec::new();
    for ((endpoint, _), (_, peer)) in [(a.clone(), b.clone()), (b, a)] {
        let issuer = mock_issuer(Default::default(), 300)?;
        let config = GroupsConfig::new(NETWORK, clock.clone()).with_issuer(issuer);
        let groups = Groups::new(endpoint, config);
        let mut counters = Vec::new();
        for key in [[1; 32], [2; 32]] {
            let builder = groups.with_key(GroupKey::from_bytes(key));
            let builder = builder.with_state_machine(Counter::default());
            let builder = builder.require_ticket(mock_validator()?);
            counters.push(builder.with_peers(vec![peer.clone()]).join().await?);
        }
        anyhow::ensure!(groups.list().len() == 2, "two groups on one endpoint");
        nodes.push((groups.spawn_router(), counters));
    }
    for counter in nodes.iter().flat_map(|(_, counters)| counters) {
        counter.when().online().await?;
    }
    // Writes through either node, to either group, are read back on both.
    nodes[0].1[0].execute(1).await?;
    nodes[1].1[0].execute(2).await?;
    nodes[1].1[1].execute(40).await?;
    for (i, (_, counters)) in nodes.iter().enumerate() {
        let one = counters[0].query((), Consistency::Strong).await?;
        let two = counters[1].query((), Consistency::Strong).await?;
        println!("node {i}: group one = {one}, group two = {two}");
        anyhow::ensure!((one, two) == (3, 40), "node {i} reads ({one}, {two})");
    }
    for (router, _) in nodes {
        router.shutdown().await?;
    }
    Ok(())
}
