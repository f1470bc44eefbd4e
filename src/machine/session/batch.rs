//! [`Sessions`]' `apply_batch`: the inner machine gets the batch's new commands as runs,
//! one call of its own `apply_batch` per run, with the very outcome of applying the batch
//! one command at a time.
//!
//! The session layer decides every command in log order, as `apply` does. A new command
//! goes into the current run with a *waiting* session: one that counts against
//! `sessions_max`, ages and can be evicted like any other, but whose output is not known
//! until the run is applied. Only a command of a client that has a waiting session needs
//! that output (a retry is answered with it; a later sequence number replaces it), so the
//! run is applied just before such a command is decided, and at the end of the batch.
//!
//! Batch boundaries differ between replicas (a member applies what it learns committed at
//! once), which is why equivalence with one-at-a-time application is the contract
//! (`machine/proptests.rs` checks it under random splits).

use super::{ClientId, Session, SessionCommand, SessionOutput, Sessions, StateMachine, Verdict};
use crate::machine::ApplyContext;

/// A new command's session while its run waits to be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Waiting {
    pub(super) last_seq: u64,
    pub(super) last_index: u64,
    pub(super) last_seen_ms: u64,
    /// Where its output goes in the batch's outputs.
    slot: usize,
}

/// New commands decided but not applied yet, in log order.
struct Run<'a, C> {
    commands: Vec<(C, ApplyContext<'a>)>,
    /// Per command: its client and its slot in the batch's outputs.
    owners: Vec<(ClientId, usize)>,
}

impl<C> Run<'_, C> {
    fn new() -> Self {
        Self {
            commands: Vec::new(),
            owners: Vec::new(),
        }
    }
}

impl<M: StateMachine> Sessions<M> {
    pub(super) fn apply_in_runs(
        &mut self,
        batch: Vec<(SessionCommand<M::Command>, ApplyContext<'_>)>,
    ) -> Vec<SessionOutput<M::Output>> {
        let mut outputs: Vec<Option<SessionOutput<M::Output>>> = Vec::with_capacity(batch.len());
        let mut run = Run::new();
        for (command, ctx) in batch {
            let (client, seq) = (command.client, command.seq);
            if self.waiting.contains_key(&client) {
                self.apply_run(&mut run, &mut outputs);
            }
            match self.admit(command, &ctx) {
                Verdict::Answered(output) => outputs.push(Some(output)),
                Verdict::New(command) => {
                    let slot = outputs.len();
                    outputs.push(None);
                    self.waiting.insert(
                        client,
                        Waiting {
                            last_seq: seq,
                            last_index: ctx.index,
                            last_seen_ms: self.clock_ms,
                            slot,
                        },
                    );
                    self.by_recency.insert((ctx.index, client));
                    run.commands.push((command, ctx));
                    run.owners.push((client, slot));
                }
            }
        }
        self.apply_run(&mut run, &mut outputs);
        outputs
            .into_iter()
            .map(|output| output.expect("every run is applied before the batch returns"))
            .collect()
    }

    /// Applies the run to the inner machine in one call, fills in its outputs and turns
    /// the sessions still waiting for them into recorded ones. A waiting session evicted
    /// or expired meanwhile is not recorded, as it would have been dropped one at a time.
    fn apply_run(
        &mut self,
        run: &mut Run<'_, M::Command>,
        outputs: &mut [Option<SessionOutput<M::Output>>],
    ) {
        if run.commands.is_empty() {
            return;
        }
        let expected = run.commands.len();
        let applied = self.inner.apply_batch(std::mem::take(&mut run.commands));
        // The inner machine's contract, not input: a machine that breaks it would leave
        // commands without outputs on every replica alike.
        assert_eq!(
            applied.len(),
            expected,
            "StateMachine::apply_batch must return one output per command"
        );
        for ((client, slot), output) in run.owners.drain(..).zip(applied) {
            // Not this command's session: it was evicted or expired, and the client may
            // even have sent a new command since, with a session of its own.
            if self.waiting.get(&client).is_some_and(|w| w.slot == slot) {
                if let Some(waiting) = self.waiting.remove(&client) {
                    // Already in the recency index, since it was decided.
                    self.sessions.insert(
                        client,
                        Session {
                            last_seq: waiting.last_seq,
                            last_index: waiting.last_index,
                            last_seen_ms: waiting.last_seen_ms,
                            output: output.clone(),
                        },
                    );
                }
            }
            outputs[slot] = Some(SessionOutput::Applied(output));
        }
    }
}
