"""Fleet insights: predictions and anomalies from device telemetry, alerts with a lifecycle, failure analysis.

core.Insights (telemetry → findings → alert transitions, in memory, clock passed in) · trend / baseline (the
statistics, scipy) · alerts (lifecycle) · failures (what failed devices share) · store / service / webhook /
metrics (database, evaluator thread, Alertmanager-format webhook, Prometheus). No FastAPI or paho in here.
"""
