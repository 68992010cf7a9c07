"""What the engine tells the integrations that hook into it (webhooks, metrics, usage and
budgets, tracing): Django signals, sent by runs.lifecycle, synchronously. The engine does not
import its receivers; they connect from their own app's ready().

Each is sent inside the transaction that makes the change, so a receiver's rows (a webhook's
outbox, a day's usage) commit with it or not at all, and an exception a receiver raises rolls
the change back (run_starting's receivers refuse a start that way, with a ServiceError)."""

from django.dispatch import Signal

# run_start, before anything is saved: user, kind (its name), thread (or None), options (the
# start's integration options: {} or what the API passed, such as a one-off `webhook`).
# A receiver raises a ServiceError to refuse the start.
run_starting = Signal()

# run_start, the queued run saved, in its transaction: run, options.
run_started = Signal()

# run_wait, the run parked waiting for a person, in the transaction that parked it: run.
run_waiting = Signal()

# run_finish, the run in its terminal status, in the transaction that set it: run, taken_back
# (True for a start the queue refused: the run is deleted next, and the client told 503).
run_ended = Signal()

# run_wait, run_hand_back and run_finish, wherever an attempt's tokens are added to the run's
# columns, in that transaction: run, input_tokens, output_tokens (this attempt's, added once:
# the conditional UPDATE that adds them is the attempt's one end). Not sent for zero tokens.
run_usage = Signal()

# The loop (runs.loop.RunLoop.turn_ended), after a model turn that the run goes on from (its
# tool calls, or a workflow's next agent step), outside any transaction: run, input_tokens,
# output_tokens (this attempt's so far, not yet added to the run). A receiver raises a
# ServiceError to end the run `failed` with its message instead (a daily token budget used
# up); the turn's reply is kept.
run_turn_ended = Signal()
