"""Jobs: the SQLite store, the scheduler that runs jobs in chunks, the webhook outbox and its
SSRF guard. No Ray: `serve_app.deployments.job_runner` wires them to the cluster."""
