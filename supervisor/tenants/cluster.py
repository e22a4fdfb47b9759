"""[cluster]: several supervisors share the companies through leases in Postgres (sql/002_cluster.sql).

The arbiter calls this at three points only:
1. apply_tenants(): `load = cluster.select(load, now)` claims up to this instance's fair share
   and keeps only the companies it holds, each spec carrying its lease's fencing token;
2. every housekeeping tick: `cluster.maintain(now, alive)` heartbeats and renews every ttl/3,
   and says which companies were lost (stop at once), which to hand back (stop gracefully;
   the lease is released here once the process has exited), whether to claim more, and which
   have emails marked for replay (`idle-supervisor retry`, run on whichever machine: tell
   their processes, as a SIGHUP does);
3. cleanup, after every child is reaped: `cluster.leave()` releases every lease.

Every database call is bounded by a short timeout and a failure is one log line; the loop never
crashes for it. Safety over availability: when renewing has failed for a whole ttl, every
company is stopped, because its lease may already be someone else's.

The balancing rules are pure functions (fair_targets, plan_balance) tested on their own.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Mapping

from supervisor.config.settings import ClusterSettings
from supervisor.tenants.rows import TenantLoad
from tenant_proc.spec import Secret

log = logging.getLogger("supervisor.cluster")

MAX_CALL_TIMEOUT = 5.0  # seconds per request: the loop waits at most this for the database


# ---- pure balancing logic -------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    instance_id: str
    held: int  # unexpired leases
    max_tenants: int = 0  # 0 = no limit


@dataclass(frozen=True)
class Plan:
    target: int  # this instance's fair share
    claim: int  # how many more to claim
    release: int  # how many to hand back


def fair_targets(active: int, caps: Mapping[str, int]) -> dict[str, int]:
    """Each live instance's share of `active` companies: as even as possible, never above an
    instance's cap (0 = none). Water-filling to the smallest whole level L with
    sum(min(cap, L)) >= active, so the targets add up to at least min(active, sum of caps) and
    every instance computes the same numbers from the same heartbeat answer."""
    if not caps:
        return {}
    active = max(0, active)
    limits = {i: (c if c > 0 else math.inf) for i, c in caps.items()}

    def covered(level: int) -> float:
        return sum(min(limit, level) for limit in limits.values())

    low, high = 0, max(active, 1)
    while low < high:  # smallest level that covers every company (or the caps run out)
        mid = (low + high) // 2
        if covered(mid) >= active:
            high = mid
        else:
            low = mid + 1
    return {i: int(min(limit, low)) for i, limit in limits.items()}


def hysteresis(target: int) -> int:
    """Hold this many above the target before handing any back: small imbalances stay put."""
    return max(1, target // 10)


def plan_balance(me: str, members: list[Member], active: int, claimable: int,
                 held: int, max_tenants: int, handing_back: int = 0) -> Plan:
    """What this instance should do now. `held` is its own count of leases it keeps and
    `handing_back` those it is handing back (still its own until their processes exited):
    both fresher than its row in `members`. No claim while handing back; no second hand-back
    of what is already on its way."""
    caps = {m.instance_id: m.max_tenants for m in members}
    caps[me] = max_tenants
    targets = fair_targets(active, caps)
    target = targets[me]
    claim = max(0, target - held - handing_back) if claimable > 0 else 0
    release = 0
    excess = held - target
    if excess > hysteresis(target):
        # Hand back only what others have room for, or it would come straight back.
        room = sum(max(0, targets[m.instance_id] - m.held) for m in members if m.instance_id != me)
        release = min(excess, room)
    return Plan(target=target, claim=claim, release=release)


# ---- the database side ----------------------------------------------------------------------

@dataclass(frozen=True)
class ClusterView:
    """One cluster_heartbeat answer."""

    members: list[Member]
    active: int
    claimable: int

    @classmethod
    def parse(cls, data: Any) -> "ClusterView":
        if isinstance(data, list) and len(data) == 1:  # some PostgREST versions wrap scalars
            data = data[0]
        members = [Member(str(r["instance_id"]), int(r["held"]), int(r.get("max_tenants") or 0))
                   for r in data.get("instances") or []]
        return cls(members=members, active=int(data["active"]), claimable=int(data["claimable"]))


@dataclass
class ClusterActions:
    """What maintain() asks of the arbiter."""

    lost: list[str] = field(default_factory=list)  # stop at once: the lease is gone
    hand_back: list[str] = field(default_factory=list)  # stop gracefully; released after exit
    claim: bool = False  # below the fair share and companies are free: apply_tenants soon
    replay: list[str] = field(default_factory=list)  # held, with rows marked `replay`: tell them


class Cluster:
    def __init__(self, settings: ClusterSettings, url: str, key: Secret,
                 heartbeat_timeout: float, now: float | None = None) -> None:
        self.instance_id = settings.instance_id
        self.ttl = settings.lease_ttl
        self.max_tenants = settings.max_tenants
        self.period = self.ttl / 3
        self.timeout = min(MAX_CALL_TIMEOUT, self.period, heartbeat_timeout / 3)
        self._url = url
        self._key = key
        now = time.monotonic() if now is None else now
        # Claim nothing for one period after start, and for a whole ttl while this instance
        # looks alone: instances started together see each other first, instead of the first
        # one claiming everything and handing most of it back a moment later.
        self.started = now
        self.settle_until = now + self.period
        self.settled = False
        self.next_round = now
        self.held: dict[str, int] = {}  # company -> fencing token
        self.releasing: dict[str, int] = {}  # handed back or no longer active: release on exit
        self.view: ClusterView | None = None
        self.target: int | None = None
        self.last_renew_ok: float | None = None  # monotonic start of the last good renew
        self.totals = {"claimed": 0, "lost": 0, "handed_back": 0, "released": 0}
        self.replay_marks = True  # False once the database turned out not to have sql/010

    # ---- called by the arbiter ----------------------------------------------------------

    def select(self, load: TenantLoad, now: float | None = None) -> TenantLoad:
        """Claim up to the fair share; return only the companies held, with their tokens."""
        now = time.monotonic() if now is None else now
        ids = set(load.specs) | set(load.errors)
        for cid in [c for c in self.held if c not in ids]:  # deactivated or deleted
            self.releasing[cid] = self.held.pop(cid)
        self._claim(ids, now)
        specs = {cid: replace(load.specs[cid], fencing_token=token)
                 for cid, token in self.held.items() if cid in load.specs}
        errors = {cid: load.errors[cid] for cid in self.held if cid in load.errors}
        return TenantLoad(specs=specs, errors=errors)

    def maintain(self, now: float, alive: Callable[[str], bool]) -> ClusterActions:
        """Cheap unless a round is due (every ttl/3) or a handed-back process has exited."""
        actions = ClusterActions()
        if self.releasing:
            exited = [cid for cid in self.releasing if not alive(cid)]
            if exited:
                self._release(exited)
        if now < self.next_round:
            return actions
        self.next_round = now + self.period
        try:
            with self._client() as client:
                view = ClusterView.parse(self._rpc(client, "cluster_heartbeat", self._hello()))
                rows = self._rpc(client, "renew_leases",
                                 {"p_instance": self.instance_id, "p_ttl": self.ttl})
                marked = self._replay_marks(client)
        except Exception as exc:
            log.error("cluster: heartbeat/renew failed: %s", self._describe(exc))
            if (self.last_renew_ok is not None and now - self.last_renew_ok >= self.ttl
                    and (self.held or self.releasing)):
                actions.lost = sorted({*self.held, *self.releasing})
                log.error("cluster: leases not renewed for %.1fs (lease_ttl %gs): stopping all %d "
                          "companies, their leases may be someone else's now",
                          now - self.last_renew_ok, self.ttl, len(actions.lost))
                self.totals["lost"] += len(actions.lost)
                self.held.clear()
                self.releasing.clear()
            return actions
        self.view, self.last_renew_ok = view, now
        renewed = {str(r["company_id"]): int(r["token"]) for r in rows}
        actions.lost = self._drop_lost(renewed)
        adopted = {c: t for c, t in renewed.items() if c not in self.held and c not in self.releasing}
        if adopted:  # e.g. a claim whose answer never arrived, or this instance_id's last run
            log.info("cluster: adopting %d leases this instance holds: %s", len(adopted),
                     _few(adopted))
            self.held.update(adopted)
            actions.claim = True
        actions.replay = sorted(marked & set(self.held))
        if self._settled(now, view):
            plan = self._plan(view)
            if plan.release:
                give = sorted(self.held)[-plan.release:]
                for cid in give:
                    self.releasing[cid] = self.held.pop(cid)
                self.totals["handed_back"] += len(give)
                actions.hand_back = give
                log.info("cluster: %d live instances, fair share %d: handing back %d of %d "
                         "companies (%s)", len(view.members), plan.target, len(give),
                         len(self.held) + len(give), _few(give))
            if plan.claim:
                actions.claim = True
        return actions

    def leave(self) -> None:
        """Clean shutdown, every child reaped: release all leases and leave the member list."""
        try:
            with self._client() as client:
                n = self._rpc(client, "cluster_leave", {"p_instance": self.instance_id})
        except Exception as exc:
            log.error("cluster: could not release leases on shutdown (they expire in %gs): %s",
                      self.ttl, self._describe(exc))
            return
        log.info("cluster: released %s leases, instance %s left", n, self.instance_id)
        self.held.clear()
        self.releasing.clear()

    def status(self, now: float) -> dict[str, Any]:
        view = self.view
        return {
            "instance_id": self.instance_id,
            "lease_ttl": self.ttl,
            "held": len(self.held),
            "releasing": len(self.releasing),
            "fair_share": self.target,
            "live_instances": len(view.members) if view else None,
            "active_companies": view.active if view else None,
            "unclaimed_companies": view.claimable if view else None,
            "last_renew_age": round(now - self.last_renew_ok, 3) if self.last_renew_ok else None,
            **{f"{k}_total": v for k, v in self.totals.items()},
        }

    # ---- internals ----------------------------------------------------------------------

    def _plan(self, view: ClusterView) -> Plan:
        members = list(view.members)
        if not any(m.instance_id == self.instance_id for m in members):
            members.append(Member(self.instance_id, len(self.held), self.max_tenants))
        plan = plan_balance(self.instance_id, members, view.active, view.claimable,
                            len(self.held), self.max_tenants, handing_back=len(self.releasing))
        self.target = plan.target
        return plan

    def _settled(self, now: float, view: ClusterView) -> bool:
        if not self.settled:
            alone = all(m.instance_id == self.instance_id for m in view.members)
            wait = self.ttl if alone else self.period
            self.settled = now >= self.started + wait
        return self.settled

    def _claim(self, ids: set[str], now: float) -> None:
        if now < self.settle_until:
            return
        try:
            with self._client() as client:
                view = ClusterView.parse(self._rpc(client, "cluster_heartbeat", self._hello()))
                self.view = view
                if not self._settled(now, view):
                    return
                plan = self._plan(view)
                if plan.claim <= 0:
                    return
                rows = self._rpc(client, "claim_companies",
                                 {"p_instance": self.instance_id, "p_ttl": self.ttl,
                                  "p_max": plan.claim})
        except Exception as exc:
            log.error("cluster: claiming companies failed: %s", self._describe(exc))
            return
        claimed = {str(r["company_id"]): int(r["token"]) for r in rows}
        if not claimed:
            return
        self.totals["claimed"] += len(claimed)
        self.held.update(claimed)
        # Added to the table after our company list was read: not runnable yet, give it back.
        unknown = [cid for cid in claimed if cid not in ids]
        for cid in unknown:
            self.releasing[cid] = self.held.pop(cid)
        log.info("cluster: claimed %d companies (fair share %s, now holding %d): %s",
                 len(claimed), self.target, len(self.held), _few(claimed))

    def _replay_marks(self, client: Any) -> set[str]:
        """Companies held here whose process can claim rows marked `replay` (sql/010). A failure
        is one line and an empty answer: the renewal it rides with must not fail for it."""
        if not self.replay_marks:
            return set()
        try:
            rows = self._rpc(client, "cluster_replay_marks", {"p_instance": self.instance_id})
        except Exception as exc:
            if getattr(exc, "code", None) in ("PGRST202", "42883"):
                self.replay_marks = False
                log.warning("cluster: the database has no cluster_replay_marks(): run "
                            "sql/010_ledger.sql, else `retry` reaches a company only when its "
                            "process restarts or its holder gets SIGHUP")
            else:
                log.error("cluster: reading replay marks failed: %s", self._describe(exc))
            return set()
        return {str(r["company_id"]) for r in rows or []}

    def _drop_lost(self, renewed: dict[str, int]) -> list[str]:
        lost = [c for c, t in self.held.items() if renewed.get(c) != t]
        for cid in lost:
            del self.held[cid]
        for cid in [c for c, t in self.releasing.items() if renewed.get(c) != t]:
            del self.releasing[cid]  # gone already: nothing left to release
        if lost:
            self.totals["lost"] += len(lost)
            log.error("cluster: lost the leases of %d companies (taken over while this instance "
                      "was paused or cut off): stopping them: %s", len(lost), _few(lost))
        return lost

    def _release(self, cids: list[str]) -> None:
        try:
            with self._client() as client:
                self._rpc(client, "release_leases",
                          {"p_instance": self.instance_id, "p_company_ids": sorted(cids)})
        except Exception as exc:
            log.error("cluster: releasing %d leases failed (retrying; they expire in %gs anyway): %s",
                      len(cids), self.ttl, self._describe(exc))
            return
        for cid in cids:
            self.releasing.pop(cid, None)
        self.totals["released"] += len(cids)
        log.info("cluster: released %d leases: %s", len(cids), _few(cids))

    def _hello(self) -> dict[str, Any]:
        return {"p_instance": self.instance_id, "p_ttl": self.ttl, "p_host": socket.gethostname(),
                "p_pid": os.getpid(), "p_max_tenants": self.max_tenants}

    @contextmanager
    def _client(self) -> Iterator[Any]:
        # A client per round, closed before returning: no socket is left for a fork to copy.
        from tenant_proc.http_clients.supabase import close_client, make_client

        client = make_client(self._url, self._key.reveal(), timeout=self.timeout)
        try:
            yield client
        finally:
            close_client(client)

    @staticmethod
    def _rpc(client: Any, name: str, params: dict[str, Any]) -> Any:
        return client.rpc(name, params).execute().data

    def _describe(self, exc: BaseException) -> str:
        from tenant_proc.http_clients.supabase import describe_error

        return describe_error(exc, self._key.reveal())


def make_cluster(config: Any) -> Cluster | None:
    """The arbiter's Cluster, or None when [cluster] is off."""
    if not config.cluster.enabled:
        return None
    return Cluster(config.cluster, config.state.supabase_url, config.state.supabase_key,
                   config.supervisor.heartbeat_timeout)


def _few(cids: Any, limit: int = 8) -> str:
    names = sorted(cids)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
