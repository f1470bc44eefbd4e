//! [`Sessions`]' `apply_batch`: the inner machine gets the batch's new commands as runs,
//! one call of its own `apply_batch` per run, with the very outcome of applying the batch
//! one command at a time.
//!
//! The session layer decides every command in log order, as `apply` does, and records a
//! new command's session at once, without its output (`None`) until the run holding the
//! command is applied: it counts against `sessions_max`, ages and can be evicted like any
//! other. Only a command of a client whose session waits for its output needs that output
//! (a retry is answered with it; a later sequence number replaces it), so the run is
//! applied just before such a command is decided, and at the end of the batch. This costs
//! one lookup per command and one per run member over one-at-a-time application
//! (`benches/sessions.rs`).
//!
//! Batch boundaries differ between replicas (a member applies what it learns committed at
//! once), which is why equivalence with one-at-a-time application is the contract
//! (`machine/proptests.rs` checks it under random splits).

use super::{ClientId, SessionCommand, SessionOutput, Sessions, StateMachine, Verdict};
use crate::machine::ApplyContext;

/// New commands decided but not applied yet, in log order.
struct Run<'a, C> {
    commands: Vec<(C, ApplyContext<'a>)>,
    /// Per command: its client, its log index and its slot in the batch's outputs.
    owners: Vec<(ClientId, u64, usize)>,
}

impl<M: StateMachine> Sessions<M> {
    pub(super) fn apply_in_runs(
        &mut self,
        batch: Vec<(SessionCommand<M::Command>, ApplyContext<'_>)>,
    ) -> Vec<SessionOutput<M::Output>> {
        let mut outputs: Vec<Option<SessionOutput<M::Output>>> = Vec::with_capacity(batch.len());
        let mut run = Run {
            commands: Vec::new(),
            owners: Vec::new(),
        };
        for (command, ctx) in batch {
            let (client, seq) = (command.client, command.seq);
            let waits = self
                .sessions
                .get(&client)
                .is_some_and(|session| session.output.is_none());
            if waits {
                self.apply_run(&mut run, &mut outputs);
            }
            match self.admit(command, &ctx) {
                Verdict::Answered(output) => outputs.push(Some(output)),
                Verdict::New(command) => {
                    let slot = outputs.len();
                    outputs.push(None);
                    self.record(client, seq, ctx.index, None);
                    run.owners.push((client, ctx.index, slot));
                    run.commands.push((command, ctx));
                }
            }
        }
        self.apply_run(&mut run, &mut outputs);
        outputs
            .into_iter()
            .map(|output| output.expect("every run is applied before the batch returns"))
            .collect()
    }

    /// Applies the run to the inner machine in one call, fills in its outputs and the
    /// sessions still waiting for them. A session evicted or expired meanwhile (and maybe
    /// replaced by a later command of its client) is left alone, as it would have been
    /// dropped one at a time.
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
        for ((client, index, slot), output) in run.owners.drain(..).zip(applied) {
            if let Some(session) = self.sessions.get_mut(&client) {
                if session.last_index == index {
                    session.output = Some(output.clone());
                }
            }
            outputs[slot] = Some(SessionOutput::Applied(output));
        }
    }
}
