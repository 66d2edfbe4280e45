"""Telling people and programs what their jobs did: completion callbacks, notifications, and
confirmations that expire.

Callbacks and notifications are outbox rows (`Delivery`) written in the same transaction as the
job's transition that causes them (`outbox.job_event`, called from `transitions`), and delivered
by the executor's periodic tick (`periodic`) with a lease, a delivery id and backoff, never in a
request or in the job's own step. A confirmation with a time limit gets a `ConfirmationDeadline`
row when the job starts waiting; the tick claims it once it is due and denies the call.
"""
