"""The engines under the ledger: one module per engine, the interface they share."""
