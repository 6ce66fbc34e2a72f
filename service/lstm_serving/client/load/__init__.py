"""The load generator behind `lstm-client load`: the command, the workload it sends, the levels
it runs (closed or open loop, in processes), server-held sequences, and `--verify`."""
