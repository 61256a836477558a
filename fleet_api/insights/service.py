"""The insights as the fleet API runs them: telemetry in, alerts evaluated on a clock, stored, and notified.

`InsightsService` is what the rest of the API touches: `observe` from the telemetry ingestion, `evaluate` and
`notify` from its own evaluator thread (or a test's injected clock), `alerts` / `alert` for the HTTP shell,
`analyze_rollout` for the rollout engine. It knows nothing of FastAPI or paho.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client import Counter
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleet_protocol.messages import Telemetry

from . import store
from .alerts import Alert, AlertState, Kind
from .config import Rules
from .core import Insights
from .failures import Analysis
from .webhook import Webhook

log = logging.getLogger(__name__)

TRANSITIONS = Counter("edgefleet_api_alert_transitions_total", "Alert lifecycle transitions", ["kind", "state"])


class InsightsService:
    def __init__(self, sessions: sessionmaker[Session], rules: Rules | None = None, webhook: Webhook | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.sessions = sessions
        self.clock = clock
        self.webhook = webhook
        with sessions() as db:
            active = store.load_active(db)  # alerts survive a restart of the API: no duplicate on the next finding
        self.core = Insights(rules, active)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._eval_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings, sessions: sessionmaker[Session]) -> InsightsService:
        rules = Rules(disk_used_ratio=settings.alert_disk_used_ratio, memory_used_ratio=settings.alert_memory_used_ratio,
                      horizon_s=settings.alert_horizon_s, for_s=settings.alert_for_s,
                      trend_min_points=settings.alert_trend_min_points, trend_min_span_s=settings.alert_trend_min_span_s)
        webhook = None
        if settings.alert_webhook_url:
            webhook = Webhook(settings.alert_webhook_url, retries=settings.alert_webhook_retries,
                              external_url=settings.alert_external_url)
        return cls(sessions, rules, webhook)

    @property
    def rules(self) -> Rules:
        return self.core.rules

    # --- ingestion ---------------------------------------------------------------------------------------
    def observe(self, device_id: str, telemetry: Telemetry, now: float | None = None) -> None:
        try:
            self.core.observe(device_id, telemetry, self.clock() if now is None else now)
        except Exception:  # a fault in the insights must never cost the telemetry ingestion a message
            log.exception("insights: telemetry of %s not observed", device_id)

    def observe_many(self, messages: Iterable[tuple[str, Telemetry]], now: float | None = None) -> None:
        """A block of telemetry (the telemetry receiver's): one clock reading and one lock for all of it."""
        try:
            failed = self.core.observe_many(messages, self.clock() if now is None else now)
        except Exception:  # a fault in the insights must never cost the telemetry ingestion a message
            log.exception("insights: a block of telemetry not observed")
            return
        for device_id, exc in failed:
            log.error("insights: telemetry of %s not observed", device_id, exc_info=exc)

    # --- evaluation --------------------------------------------------------------------------------------
    def evaluate(self, now: float | None = None) -> list[Alert]:
        """One round: findings → transitions → stored in one transaction. Returns the alerts that changed."""
        now = self.clock() if now is None else now
        with self._eval_lock:
            before = {k: a.state for k, a in self.core.book.active.items()}
            changed = self.core.evaluate(now)
            if changed:
                for attempt in range(2):
                    try:
                        with self.sessions() as db, db.begin():
                            store.save(db, changed)
                        break
                    except IntegrityError:  # another process opened the same alert meanwhile: join its row
                        if attempt:
                            raise
            for a in changed:
                if before.get(a.key) != a.state:  # an update of a firing alert's evidence is no transition
                    TRANSITIONS.labels(a.kind.value, a.state.value).inc()
        return changed

    def notify(self, limit: int = 100) -> int:
        """Send what the notification outbox holds; an alert the webhook did not take stays for the next round."""
        if self.webhook is None:
            return 0
        with self.sessions() as db:
            pending = store.unnotified(db, limit)
        sent = 0
        for a in pending:
            if not self.webhook.send(a):
                break  # the receiver is away: keep the order, try again next round
            assert a.id is not None  # read from the database
            with self.sessions() as db, db.begin():
                store.mark_notified(db, a.id, a.state)
            sent += 1
        return sent

    def tick(self, now: float | None = None) -> None:
        self.evaluate(now)
        self.notify()

    def start(self, interval_s: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.tick()
                except Exception:  # keep evaluating; the next round retries
                    log.exception("alert evaluation failed")

        self._thread = threading.Thread(target=loop, name="alert-evaluator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._stop = threading.Event()

    def close(self) -> None:
        self.stop()
        if self.webhook is not None:
            self.webhook.close()

    # --- reading -----------------------------------------------------------------------------------------
    def alerts(self, *, state: AlertState | None = None, active: bool | None = None, device_id: str | None = None,
               kind: Kind | None = None, model: str | None = None, limit: int = 100, before_id: int | None = None) -> list[Alert]:
        with self.sessions() as db:
            return store.query(db, state=state, active=active, device_id=device_id, kind=kind, model=model, limit=limit,
                               before_id=before_id)

    def alert(self, alert_id: int) -> Alert | None:
        with self.sessions() as db:
            return store.get(db, alert_id)

    def analyze_rollout(self, rollout_id: int) -> Analysis:
        from .rollouts import analyze_rollout

        with self.sessions() as db:
            return analyze_rollout(db, rollout_id)
