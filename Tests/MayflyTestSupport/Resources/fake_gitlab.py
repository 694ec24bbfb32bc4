#!/usr/bin/env python3
"""A fake GitLab server speaking the runner API v4 over real HTTP(S), for Mayfly's tests.

It follows /work/shared/reference/gitlab-runner-protocol.md ("the reference", sections quoted as
§N). Tests start it as a child process and drive it through /__control (see
fake_gitlab_README.md). Python 3.11 standard library only.

  python3 fake_gitlab.py --port-file FILE [--cert PEM --key PEM [--client-ca PEM]]
                         [--runner-token T] [--registration-token T] [--verbose]
"""
import argparse
import hashlib
import json
import os
import re
import secrets
import ssl
import sys
import threading
import time
import zlib
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

API = "/api/v4"
LEGACY_SYSTEM_XID = "<legacy>"  # §2.2: manager used when the runner sends no system_id
PENDING_STATE_ACCEPT_TIMEOUT = 300  # §5.2 item 4: 202 only while the pending state is < 5 min old
WORKHORSE_MAX_BODY = 32 * 1024  # §3.3: Workhorse reads at most 32 KiB of a long-poll body
DEFAULT_MAX_TRACE = 100 * 1024 * 1024  # §7.2 item 5: ci_jobs_trace_size_limit, believed 100 MB
# Enums::Ci::CommitStatus.failure_reasons (GitLab server); sent as features.failure_reasons (§4, §5.4).
FAILURE_REASONS = [
    "unknown_failure", "script_failure", "api_failure", "stuck_or_timeout_failure",
    "runner_system_failure", "missing_dependency_failure", "runner_unsupported", "stale_schedule",
    "job_execution_timeout", "archived_failure", "unmet_prerequisites", "scheduler_failure",
    "data_integrity_failure", "forward_deployment_failure", "user_blocked", "project_deleted",
    "ci_quota_exceeded", "pipeline_loop_detected", "no_matching_runner", "trace_size_exceeded",
    "builds_disabled", "environment_creation_failure", "deployment_rejected",
    "failed_outdated_deployment_job", "protected_environment_failure",
    "insufficient_bridge_permissions", "downstream_bridge_project_not_found",
    "invalid_bridge_trigger", "upstream_bridge_project_not_found",
    "insufficient_upstream_permissions", "bridge_pipeline_is_child_pipeline",
    "downstream_pipeline_creation_failed", "secrets_provider_not_found",
    "reached_max_descendant_pipelines_depth", "ip_restriction_failure",
    "reached_max_pipeline_hierarchy_size", "reached_downstream_pipeline_trigger_rate_limit",
]
EXECUTING = ("running", "canceling")  # §1.3, S11 EXECUTING_STATUSES
FINISHED = ("success", "failed", "canceled")
FAULT_ENDPOINTS = {"any", "register", "verify", "unregister", "unregister_manager", "reset_token",
                   "discovery", "request", "update", "trace"}


class HTTPAnswer(Exception):
    """Raised by a route to answer at once with a status, a JSON (or bytes) body and headers."""

    def __init__(self, status, body=None, headers=()):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, list(headers)


def forbidden(message="403 Forbidden", job_status=None):
    return HTTPAnswer(403, {"message": message}, [("Job-Status", job_status)] if job_status else [])


def crc32_text(data):
    return "crc32:%08x" % (zlib.crc32(bytes(data)) & 0xFFFFFFFF)  # §8.1 output.checksum format


def ruby_to_i(text):
    """Ruby's String#to_i, used by the server on the Content-Range start (§7.2 item 4)."""
    match = re.match(r"\s*([+-]?\d+)", text or "")
    return int(match.group(1)) if match else 0


def backoff_seconds(elapsed):
    """Gitlab::Ci::Runner::Backoff (§5.2, S7): 0-3 s → 1, 4-7 → 2, 8-15 → 4 … ≥128 → 64."""
    e = int(elapsed)
    return 1 if e < 4 else min(64, 2 ** (e.bit_length() - 2))


def iso_now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def deep_merge(base, extra):
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def truthy(value):
    return str(value).lower() in ("true", "1", "yes", "on")


TYPE_OK = {
    str: lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool),
    int: lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, str) and re.fullmatch(r"-?\d+", v) is not None),
    bool: lambda v: isinstance(v, bool) or str(v).lower() in ("true", "false", "1", "0"),
    list: lambda v: isinstance(v, (list, str)),  # arrays, or comma-separated strings
}


def type_errors(params, spec, prefix=""):
    errors = []
    for name, kind in spec.items():
        value, label = params.get(name), f"{prefix}[{name}]" if prefix else name
        if value is None:
            continue
        if isinstance(kind, dict):  # a Hash param, with its declared members
            errors += type_errors(value, kind, label) if isinstance(value, dict) else [label]
        elif not TYPE_OK[kind](value):
            errors.append(label)
    return errors


def check_types(params, spec):
    """Grape-style declared-type validation: 400 {"error": "<name> is invalid"}."""
    errors = type_errors(params, spec)
    if errors:
        raise HTTPAnswer(400, {"error": ", ".join(f"{e} is invalid" for e in errors)})


class Job:
    def __init__(self, job_id, token, spec):
        self.id, self.token, self.spec = job_id, token, spec
        self.state = "pending"          # GitLab job status (pending → running → success/failed/…)
        self.awaiting_ack = False       # handed out under two-phase commit, not yet acknowledged
        self.runner_id = self.system_id = self.payload = None
        self.features = {}              # the features of the runner manager that took the job
        self.received = bytearray()     # trace bytes exactly as the runner sent them
        self.stored = bytearray()       # after the server's hide_secrets (§7.2 item 7)
        self.live_chunks = False        # trace data not yet "persisted" (drives the 202 of §5.2)
        self.pending_state_at = None    # first accept-able final update (Ci::BuildPendingState)
        self.failure_reason = self.exit_code = self.final_update = None
        self.updates, self.patches = [], []
        self.enqueued_at, self.debug_trace = time.time(), None

    def view(self):
        return {
            "id": self.id, "token": self.token, "state": self.state, "awaiting_ack": self.awaiting_ack,
            "failure_reason": self.failure_reason, "exit_code": self.exit_code,
            "runner_id": self.runner_id, "system_id": self.system_id,
            "trace": self.stored.decode("utf-8", "replace"),
            "trace_received": self.received.decode("utf-8", "replace"),
            "trace_bytes": len(self.received), "trace_crc32": crc32_text(self.received),
            "trace_stored_crc32": crc32_text(self.stored), "debug_trace": self.debug_trace,
            "final_update": self.final_update, "updates": self.updates, "patches": self.patches,
            "payload": self.payload,
        }


DEFAULT_SCENARIO = {"long_poll": 0, "long_poll_delivers": False, "trace_update_interval": 60,
                    "final_update_202": 0, "live_trace": True, "max_trace_bytes": DEFAULT_MAX_TRACE,
                    "registration_disallowed": False}


class State:
    """Everything the fake GitLab knows; guarded by one condition variable."""

    def __init__(self, runner_token, registration_token):
        self.cv = threading.Condition()
        self.initial_runner_token, self.registration_token = runner_token, registration_token
        self.next_job_id, self.next_runner_id = 1001, 2
        self.base_url = ""
        self.reset()

    def reset(self):
        self.runners = {self.initial_runner_token: self.new_runner(1, self.initial_runner_token)}
        self.jobs, self.queue, self.faults, self.requests = {}, [], [], []
        self.scenario = dict(DEFAULT_SCENARIO)
        self.tick = getattr(self, "tick", 0) + 1  # runner queue value (§3.2), opaque to runners

    @staticmethod
    def new_runner(runner_id, token, **attributes):
        return dict({"id": runner_id, "token": token, "token_expires_at": None, "paused": False,
                     "maximum_timeout": None, "managers": {}}, **attributes)

    def queue_value(self):
        return str(self.tick)

    def take_fault(self, endpoint):
        """First fault whose endpoint matches ("any" matches all); its count is consumed."""
        for fault in self.faults:
            if fault["endpoint"] in ("any", endpoint):
                fault["count"] -= 1
                if fault["count"] <= 0:
                    self.faults.remove(fault)
                return dict(fault)
        return None


STATE: State = None  # set in main()
VERBOSE = False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def version_string(self):
        return "nginx"  # what GitLab's bundled nginx announces

    def log_message(self, fmt, *args):
        if VERBOSE:
            sys.stderr.write("fake_gitlab: " + (fmt % args) + "\n")

    # ---- plumbing ------------------------------------------------------------------------
    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(length) if length else b""

    def respond(self, status, body=None, headers=()):
        if isinstance(body, (dict, list)):
            body, headers = json.dumps(body).encode(), [("Content-Type", "application/json")] + list(headers)
        body = body or b""
        # Recorded before the answer goes out: a client that asks for the request log right after
        # its answer must find the status there.
        if self.record is not None:
            self.record["status"] = status
        self.send_response(status)
        for name, value in headers:
            if value is not None:
                self.send_header(name, str(value))
        self.send_header("X-Request-Id", secrets.token_hex(13))
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status not in (204, 304) and self.command != "HEAD":
            self.wfile.write(body)

    def content_type(self):
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    def params(self):
        """Grape params: query string merged with a JSON (or form) body; the body wins."""
        params = {k: v[-1] for k, v in parse_qs(self.url.query, keep_blank_values=True).items()}
        if self.body and self.content_type() == "application/json":
            try:
                parsed = json.loads(self.body)
            except ValueError:
                raise HTTPAnswer(400, {"error": "message body does not match declared format"})
            if isinstance(parsed, dict):
                params.update(parsed)
        elif self.body and self.content_type() == "application/x-www-form-urlencoded":
            params.update({k: v[-1] for k, v in parse_qs(self.body.decode("utf-8", "replace")).items()})
        return params

    @staticmethod
    def required(params, *names):
        missing = [n for n in names if params.get(n) is None]
        if missing:
            raise HTTPAnswer(400, {"error": ", ".join(f"{n} is missing" for n in missing)})

    def handle_any(self):
        self.url = urlparse(self.path)
        self.record = None
        self.body = self.read_body()
        if self.url.path.startswith("/__control"):
            try:
                return self.control()
            except HTTPAnswer as answer:
                return self.respond(answer.status, answer.body, answer.headers)
        if self.url.path.startswith(API + "/") or self.url.path == API:
            self.record_request()
            return self.api()
        self.respond(404, {"error": "404 Not Found"})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = handle_any

    def record_request(self):
        headers = {}
        for name, value in self.headers.items():
            headers[name] = headers[name] + ", " + value if name in headers else value
        self.record = {"method": self.command, "path": self.path, "headers": headers,
                       "body_length": len(self.body), "status": None, "time": time.time()}
        try:
            if self.body:
                self.record["body_json"] = json.loads(self.body)
        except ValueError:
            pass
        with STATE.cv:
            STATE.requests.append(self.record)

    # ---- runner API ------------------------------------------------------------------------
    # (path under /api/v4, {method: endpoint}); endpoint names the api_* method and the fault target
    ROUTES = [
        (r"/runners/?", {"POST": "register", "DELETE": "unregister"}),
        (r"/runners/verify", {"POST": "verify"}),
        (r"/runners/managers", {"DELETE": "unregister_manager"}),
        (r"/runners/reset_authentication_token", {"POST": "reset_token"}),
        (r"/runners/router/discovery", {"GET": "discovery"}),
        (r"/jobs/request", {"POST": "request"}),
        (r"/jobs/(?P<id>[^/]+)", {"PUT": "update"}),
        (r"/jobs/(?P<id>[^/]+)/trace", {"PATCH": "trace"}),
    ]

    def api(self):
        subpath = self.url.path[len(API):]
        matches = [(m, methods) for pattern, methods in self.ROUTES
                   for m in [re.fullmatch(pattern, subpath)] if m]
        for match, methods in matches:
            if self.command not in methods:
                continue
            endpoint = methods[self.command]
            try:
                if self.apply_fault(endpoint, match.groupdict().get("id")):
                    return
                return getattr(self, "api_" + endpoint)(**match.groupdict())
            except HTTPAnswer as answer:
                return self.respond(answer.status, answer.body, answer.headers)
        if matches:
            return self.respond(405, {"error": "405 Not Allowed"})
        self.respond(404, {"error": "404 Not Found"})

    def apply_fault(self, endpoint, job_id):
        """Scenario faults stand in for rate limits / migrations backoff (§1.3), proxies and
        lock conflicts; they act before authentication, as check_if_backoff_required! does."""
        with STATE.cv:
            fault = STATE.take_fault(endpoint)
        if fault is None:
            return False
        if fault.get("delay"):
            time.sleep(float(fault["delay"]))
        if fault.get("drop_connection"):  # read the request, then close without an answer
            self.close_connection = True
            if self.record is not None:
                self.record["dropped"] = True
            return True
        status = int(fault.get("status", 500))
        headers = [tuple(h) for h in fault.get("headers", {}).items()]
        if fault.get("retry_after") is not None:
            headers.append(("Retry-After", str(fault["retry_after"])))
        with STATE.cv:
            if status == 416 and endpoint == "trace":
                job = STATE.jobs.get(int(job_id)) if str(job_id).isdigit() else None
                if job is not None and fault.get("truncate_to") is not None:
                    keep = int(fault["truncate_to"])  # lost storage, like a flushed Redis (§7.2 item 11)
                    del job.received[keep:], job.stored[keep:]
                headers.append(("Range", "0-%d" % (len(job.received) if job else 0)))
            phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
            message = fault.get("message") or f"{status} {phrase}"
        self.respond(status, {"message": message}, headers)
        return True

    def authenticate_runner(self, params, heartbeat=True):
        """S2 authenticate_runner!: 400 without the token param, 403 for an unknown one.
        Only the param counts: a RUNNER-TOKEN header alone is not enough (§1.2)."""
        self.required(params, "token")
        check_types(params, {"token": str, "system_id": str,
                             "info": {"name": str, "version": str, "revision": str, "platform": str,
                                      "architecture": str, "executor": str, "features": {},
                                      "config": {"gpus": str}, "labels": {}}})
        runner = STATE.runners.get(str(params["token"]))
        if runner is None:
            raise forbidden()
        if heartbeat:
            manager = runner["managers"].setdefault(str(params.get("system_id") or LEGACY_SYSTEM_XID), {})
            manager["contacted_at"] = iso_now()
            if isinstance(params.get("info"), dict):
                manager["info"] = params["info"]
                manager["features"] = params["info"].get("features") or {}
        return runner

    @staticmethod
    def registration_details(runner):  # S9 RunnerRegistrationDetails
        return {"id": runner["id"], "token": runner["token"], "token_expires_at": runner["token_expires_at"]}

    def api_register(self):  # §2.4
        params = self.params()
        self.required(params, "token")
        check_types(params, {"description": str, "maintenance_note": str, "maintainer_note": str,
                             "paused": bool, "active": bool, "locked": bool, "run_untagged": bool,
                             "tag_list": list, "maximum_timeout": int, "info": {}})
        for a, b in (("maintainer_note", "maintenance_note"), ("active", "paused")):
            if params.get(a) is not None and params.get(b) is not None:
                raise HTTPAnswer(400, {"error": f"{a}, {b} are mutually exclusive"})
        if params.get("access_level") not in (None, "not_protected", "ref_protected"):
            raise HTTPAnswer(400, {"error": "access_level does not have a valid value"})
        with STATE.cv:
            if str(params["token"]) != STATE.registration_token:
                raise forbidden("403 Forbidden - invalid token supplied")
            if STATE.scenario["registration_disallowed"]:
                raise HTTPAnswer(410, {"message": "410 Gone - runner registration disallowed"})
            # §12: runners registered with a legacy registration token get a glrtr- token.
            token = "glrtr-" + secrets.token_hex(10)
            tags = params.get("tag_list") or []
            paused = truthy(params["paused"]) if params.get("paused") is not None else \
                (not truthy(params["active"]) if params.get("active") is not None else False)
            runner = STATE.new_runner(
                STATE.next_runner_id, token, description=params.get("description"), paused=paused,
                maximum_timeout=int(params["maximum_timeout"]) if params.get("maximum_timeout") is not None else None,
                tag_list=[t.strip() for t in tags.split(",")] if isinstance(tags, str) else tags,
                run_untagged=params.get("run_untagged"), locked=params.get("locked"),
                access_level=params.get("access_level"), registration_body=params)
            STATE.next_runner_id += 1
            STATE.runners[token] = runner
            body = self.registration_details(runner)
        self.respond(201, body)

    def api_verify(self):  # §2.5: 200 with the registration details (newest server)
        params = self.params()
        with STATE.cv:
            body = self.registration_details(self.authenticate_runner(params))
        self.respond(200, body)

    def api_unregister(self):  # §2.6: 204, no body
        params = self.params()
        with STATE.cv:
            runner = self.authenticate_runner(params, heartbeat=False)
            del STATE.runners[runner["token"]]
        self.respond(204)

    def api_unregister_manager(self):  # §2.7
        params = self.params()
        self.required(params, "token", "system_id")
        with STATE.cv:
            runner = self.authenticate_runner(params, heartbeat=False)
            if runner["managers"].pop(str(params["system_id"]), None) is None:
                raise HTTPAnswer(404, {"message": "404 Runner manager Not Found"})
        self.respond(204)

    def api_reset_token(self):  # §2.8: 201 {token, token_expires_at}; the old token stops working
        params = self.params()
        with STATE.cv:
            runner = self.authenticate_runner(params)
            del STATE.runners[runner["token"]]
            prefix = re.match(r"(gl[a-z]+-)?", runner["token"]).group(0) or "glrt-"
            runner["token"] = prefix + secrets.token_hex(10)
            STATE.runners[runner["token"]] = runner
            body = {"token": runner["token"], "token_expires_at": runner["token_expires_at"]}
        self.respond(201, body)

    def api_discovery(self):  # §2.9: header-only auth; the job router is "not enabled" here
        with STATE.cv:
            if self.headers.get("Runner-Token") not in STATE.runners:
                raise forbidden()
        self.respond(501, {"message": "501 Not Implemented - Job Router is not available. Please contact your administrator."})

    def api_request(self):  # §3
        extra = []
        with STATE.cv:
            poll = float(STATE.scenario["long_poll"])
        if poll > 0:
            # §3.3 Workhorse in front of Rails.
            extra = [("Gitlab-Ci-Builds-Polling", "yes")]
            if len(self.body) > WORKHORSE_MAX_BODY:
                raise HTTPAnswer(413, b"Request Entity Too Large", extra)
            try:
                peek = json.loads(self.body) if self.content_type() == "application/json" else None
            except ValueError:
                peek = None
            if isinstance(peek, dict) and peek.get("token") and peek.get("last_update"):
                answer_now = False
                with STATE.cv:
                    last = str(peek["last_update"])
                    if str(peek["token"]) in STATE.runners and STATE.queue_value() == last:
                        deadline = time.monotonic() + poll
                        while STATE.queue_value() == last and time.monotonic() < deadline:
                            STATE.cv.wait(deadline - time.monotonic())
                        changed = STATE.queue_value() != last
                        answer_now = not (changed and STATE.scenario["long_poll_delivers"])
                if answer_now:  # change or timeout: 204, no body, no X-GitLab-Last-Update
                    return self.respond(204, None, extra)
        try:
            status, body, headers = self.acquire_job()
        except HTTPAnswer as answer:
            raise HTTPAnswer(answer.status, answer.body, answer.headers + extra)
        self.respond(status, body, headers + extra)

    def acquire_job(self):  # S3 acquire_ci_job! (§3.2)
        params = self.params()
        check_types(params, {"last_update": str, "session": {"url": str, "certificate": str,
                                                              "authorization": str}})
        with STATE.cv:
            runner = self.authenticate_runner(params)
            if runner["paused"]:  # §3.2 item 3
                return 204, None, [("X-GitLab-Last-Update", STATE.queue_value())]
            if params.get("last_update") is not None and str(params["last_update"]) == STATE.queue_value():
                # §3.2 item 4: cheap path, the same value echoed.
                return 204, None, [("X-GitLab-Last-Update", str(params["last_update"]))]
            new_update = STATE.queue_value()
            job = STATE.queue.pop(0) if STATE.queue else None
            if job is None:
                return 204, None, [("X-GitLab-Last-Update", new_update)]
            system_id = str(params.get("system_id") or LEGACY_SYSTEM_XID)
            job.runner_id, job.system_id = runner["id"], system_id
            job.features = dict(runner["managers"].get(system_id, {}).get("features") or {})
            # Two-phase commit (§3.4, §5.2 item 3): a runner advertising two_phase_job_commit
            # gets the job while it stays `pending` until it sends PUT state=running.
            if job.features.get("two_phase_job_commit") is True:
                job.awaiting_ack = True
            else:
                job.state = "running"
            job.payload = build_payload(job, runner)
            body = json.dumps(job.payload, separators=(",", ":")).encode()
        # §3.2: 201, Content-Type exactly application/json, no X-GitLab-Last-Update.
        return 201, body, [("Content-Type", "application/json")]

    def find_job(self, job_id, token):
        """S2 authenticate_job!, minus the processing check (callers add it)."""
        if not str(job_id).isdigit():
            raise HTTPAnswer(400, {"error": "id is invalid"})
        job = STATE.jobs.get(int(job_id))
        if job is None:
            raise forbidden("403 Forbidden - Job not found")
        if not token or token != job.token:
            raise forbidden()
        return job

    def logged_job_call(self, job_id, log, entry, work):
        """Runs work() under the lock. When the id names a job, the call and its answer's status
        go to that job's `updates`/`patches` log, also when it was refused."""
        with STATE.cv:
            job = STATE.jobs.get(int(job_id)) if str(job_id).isdigit() else None
            if job is not None:
                getattr(job, log).append(dict(entry, time=time.time()))
                entry = getattr(job, log)[-1]
            try:
                status, headers = work()
            except HTTPAnswer as answer:
                entry["status"] = answer.status
                raise
            entry["status"] = status
        return status, headers

    def api_update(self, id):  # §5
        def work():
            params = self.params()
            self.required(params, "token")  # §12: PUT requires the token param; the header is not enough
            check_types(params, {"token": str, "state": str, "checksum": str, "failure_reason": str,
                                 "output": {"checksum": str, "bytesize": int}, "exit_code": int})
            job = self.find_job(id, str(params["token"]))
            return self.apply_update(job, str(params.get("state") or ""), params)
        try:
            body = json.loads(self.body)
        except ValueError:
            body = self.body.decode("utf-8", "replace")
        status, headers = self.logged_job_call(id, "updates", {"body": body}, work)
        self.respond(status, str(status).encode(), [("Content-Type", "application/json")] + headers)

    def apply_update(self, job, state, params):
        if job.awaiting_ack:  # two-phase commit workflow (S5 handle_runner_ack_workflow)
            if state == "pending":
                return 200, [("Job-Status", job.state)]
            if state != "running":
                raise HTTPAnswer(400, b"400", [("Content-Type", "application/json"), ("Job-Status", job.state)])
            job.awaiting_ack, job.state = False, "running"
        if job.state not in EXECUTING:
            raise forbidden("403 Forbidden - Job is not processing on runner", job.state)
        output = params.get("output") if isinstance(params.get("output"), dict) else {}
        checksum = output.get("checksum") or params.get("checksum")
        # S5 accept_available? && live_chunks_pending?: 202 while the live trace is not persisted.
        if state != "running" and checksum:
            if job.pending_state_at is None:
                job.pending_state_at = time.time()
            age = time.time() - job.pending_state_at
            forced = STATE.scenario["final_update_202"] > 0
            live = job.live_chunks and STATE.scenario["live_trace"]
            if (forced or live) and age <= PENDING_STATE_ACCEPT_TIMEOUT:
                if forced:
                    STATE.scenario["final_update_202"] -= 1
                job.live_chunks = False  # chunk.schedule_to_persist!: persisted before the retry
                return 202, [("Job-Status", job.state),
                             ("X-GitLab-Trace-Update-Interval", str(backoff_seconds(age)))]
        if state == "running":
            return 200, [("Job-Status", job.state)]
        if state not in ("success", "failed"):
            raise HTTPAnswer(400, b"400", [("Content-Type", "application/json"), ("Job-Status", job.state)])
        sent_reason = params.get("failure_reason")
        if job.state == "canceling":
            job.state = "canceled"  # §12: a final success/failed for a canceling job → canceled
        elif state == "success":
            job.state = "success"
        else:
            job.state = "failed"  # unknown or missing reasons become unknown_failure (§5.2 item 5)
            job.failure_reason = sent_reason if sent_reason in FAILURE_REASONS else "unknown_failure"
            job.exit_code = int(params["exit_code"]) if params.get("exit_code") is not None else None
        bytesize = output.get("bytesize")
        expected = crc32_text(job.received)
        job.final_update = {
            "state": state, "failure_reason": sent_reason, "exit_code": params.get("exit_code"),
            "checksum": checksum, "bytesize": bytesize, "expected_checksum": expected,
            "expected_bytesize": len(job.received),
            "checksum_ok": isinstance(checksum, str) and checksum.lower() == expected,
            "checksum_format_ok": isinstance(checksum, str) and re.fullmatch(r"crc32:[0-9a-f]{8}", checksum) is not None,
            "bytesize_ok": bytesize is not None and int(bytesize) == len(job.received),
        }
        return 200, [("Job-Status", job.state)]

    def api_trace(self, id):  # §7
        query = parse_qs(self.url.query, keep_blank_values=True)
        token = (query.get("token") or [None])[-1] or self.headers.get("Job-Token")  # the param wins
        entry = {"range": self.headers.get("Content-Range"), "length": len(self.body)}
        status, headers = self.logged_job_call(
            id, "patches", entry, lambda: self.append_trace(self.find_job(id, token), query))
        self.respond(status, None, headers)

    def append_trace(self, job, query):
        if job.state not in EXECUTING:
            raise forbidden("403 Forbidden - Job is not processing on runner", job.state)
        content_range = self.headers.get("Content-Range")
        if content_range is None:
            raise HTTPAnswer(400, {"message": "400 Missing header Content-Range"})
        if "debug_trace" in query:
            job.debug_trace = query["debug_trace"][-1].lower() in ("true", "1", "yes", "on")
        # S4 AppendBuildTraceService: only the start counts; the end is start + body bytesize.
        start = ruby_to_i(content_range.split("-")[0])
        end = start + len(self.body)
        if end > int(STATE.scenario["max_trace_bytes"]):
            job.state, job.failure_reason = "failed", "trace_size_exceeded"
            raise forbidden()  # plain 403, no Job-Status (runner.rb `error!('403 Forbidden', 403)`)
        # S6 Trace#append: write only when start == stored length, then compare the new size
        # with start + length (so a repeat of exactly the stored tail is a 202, §12).
        if start == len(job.received) and self.body:
            job.received += self.body
            job.stored += hide_secrets(self.body, job)
            job.live_chunks = True
        size = len(job.received)
        if size != end:
            raise HTTPAnswer(416, {"message": "416 Range Not Satisfiable"}, [("Range", "0-%d" % size)])
        return 202, [("Job-Status", job.state), ("Range", "0-%d" % size),
                     ("X-GitLab-Trace-Update-Interval", str(int(STATE.scenario["trace_update_interval"])))]

    # ---- control API -----------------------------------------------------------------------
    def control_body(self):
        try:
            body = json.loads(self.body) if self.body else {}
        except ValueError:
            raise HTTPAnswer(400, {"error": "control body is not JSON"})
        if not isinstance(body, dict):
            raise HTTPAnswer(400, {"error": "control body must be a JSON object"})
        return body

    def control(self):
        with STATE.cv:  # answers are serialized under the lock, sent outside it
            status, answer = self.control_answer(self.url.path.rstrip("/"), self.command)
            body = json.dumps(answer).encode()
        self.respond(status, body, [("Content-Type", "application/json")])

    def control_answer(self, path, method):
        match = re.fullmatch(r"/__control/jobs/(\d+)(/cancel)?", path)
        if path == "/__control/jobs" and method == "POST":
            return 201, enqueue(self.control_body())
        if path == "/__control/jobs" and method == "GET":
            return 200, [{"id": j.id, "state": j.state} for j in STATE.jobs.values()]
        if match and int(match.group(1)) not in STATE.jobs:
            raise HTTPAnswer(404, {"error": "no such job"})
        if match and not match.group(2) and method == "GET":
            return 200, STATE.jobs[int(match.group(1))].view()
        if match and match.group(2) and method == "POST":
            return 200, cancel(STATE.jobs[int(match.group(1))], self.control_body())
        if path == "/__control/scenario" and method == "POST":
            return 200, set_scenario(self.control_body())
        if path == "/__control/scenario" and method == "GET":
            return 200, dict(STATE.scenario, faults=STATE.faults)
        if path == "/__control/requests" and method == "GET":
            query = parse_qs(self.url.query)
            prefix, verb = (query.get("path_prefix") or [""])[0], (query.get("method") or [""])[0]
            return 200, [r for r in STATE.requests
                         if r["path"].startswith(prefix) and (not verb or r["method"] == verb)]
        if path == "/__control/runners" and method == "GET":
            return 200, list(STATE.runners.values())
        if path == "/__control/reset" and method == "POST":
            STATE.reset()
            STATE.cv.notify_all()  # pending long polls answer 204
            return 200, {"reset": True}
        raise HTTPAnswer(404, {"error": "unknown control endpoint"})


def hide_secrets(data, job):
    """Ci::Build#hide_secrets (§7.2 item 7): the job token and the project's runners token
    (here the registration token) become 'x' of the same length, per chunk."""
    data = bytes(data)
    for secret in (job.token, STATE.registration_token):
        if secret:
            raw = secret.encode()
            data = data.replace(raw, b"x" * len(raw))
    return data


def enqueue(spec):
    raw = spec.get("raw") if isinstance(spec.get("raw"), dict) else {}
    job_id = raw.get("id", spec.get("id"))
    if job_id is None:
        job_id = STATE.next_job_id
    if not isinstance(job_id, int) or job_id in STATE.jobs:
        raise HTTPAnswer(409, {"error": f"job id {job_id!r} is not a new integer"})
    STATE.next_job_id = max(STATE.next_job_id, job_id + 1)
    token = raw.get("token", spec.get("token")) or "glcbt-" + secrets.token_hex(10)
    for key in ("script", "after_script", "variables"):
        if key in spec and not isinstance(spec[key], list):
            raise HTTPAnswer(400, {"error": f"{key} must be a list"})
    if not all(isinstance(v, dict) and isinstance(v.get("key"), str) for v in spec.get("variables", [])):
        raise HTTPAnswer(400, {"error": "each variable needs a string key"})
    if not isinstance(spec.get("timeout", 0), int):
        raise HTTPAnswer(400, {"error": "timeout must be an integer number of seconds"})
    job = Job(job_id, token, spec)
    STATE.jobs[job_id] = job
    STATE.queue.append(job)
    STATE.tick += 1  # the runner queue value changes: a job may be available (§3.2)
    STATE.cv.notify_all()  # wakes long polls
    return {"id": job_id, "token": token}


def variable(key, value, public=True, masked=False, file=False, raw=False):
    entry = {"key": key, "value": str(value), "public": public, "masked": masked}
    if file:  # §4: `file` and `raw` only when true
        entry["file"] = True
    if raw:
        entry["raw"] = True
    return entry


def build_payload(job, runner):
    """The 201 body of /jobs/request (§4), built when the job is handed out."""
    spec, base = job.spec, STATE.base_url
    url = urlparse(base)
    pipeline_id, project_id, project = 500 + job.id, 42, "mayfly/mayfly-test"
    sha = hashlib.sha1(f"commit-{job.id}".encode()).hexdigest()
    ref = spec.get("ref", "main")
    timeout = int(spec.get("timeout", 3600))
    runner_timeout = timeout if runner.get("maximum_timeout") is None else min(timeout, runner["maximum_timeout"])
    repo_url = f"{url.scheme}://gitlab-ci-token:{job.token}@{url.netloc}/{project}.git"
    message = 'Test commit for Mayfly\n\nBody with "quotes", $dollars, `backticks` and a \\ backslash.\n'
    name, stage = spec.get("name", "test"), spec.get("stage", "test")
    started = iso_now()
    v = variable
    variables = [
        v("CI_PIPELINE_ID", pipeline_id), v("CI_PIPELINE_URL", f"{base}/{project}/-/pipelines/{pipeline_id}"),
        v("CI_JOB_ID", job.id), v("CI_JOB_URL", f"{base}/{project}/-/jobs/{job.id}"),
        v("CI_JOB_TOKEN", job.token, public=False, masked=True), v("CI_JOB_STARTED_AT", started),
        v("CI_REGISTRY_USER", "gitlab-ci-token"),
        v("CI_REGISTRY_PASSWORD", job.token, public=False, masked=True),
        v("CI_REPOSITORY_URL", repo_url, public=False),
        v("CI_DEPENDENCY_PROXY_USER", "gitlab-ci-token"),
        v("CI_DEPENDENCY_PROXY_PASSWORD", job.token, public=False, masked=True),
        v("CI_JOB_NAME", name), v("CI_JOB_NAME_SLUG", re.sub(r"[^a-z0-9]+", "-", name.lower())),
        v("CI_JOB_STAGE", stage), v("CI_NODE_TOTAL", 1), v("CI", "true"), v("GITLAB_CI", "true"),
        v("CI_SERVER_URL", base), v("CI_SERVER_HOST", url.hostname), v("CI_SERVER_PORT", url.port),
        v("CI_SERVER_PROTOCOL", url.scheme), v("CI_SERVER_NAME", "GitLab"),
        v("CI_SERVER_VERSION", "17.5.0"), v("CI_SERVER_VERSION_MAJOR", 17),
        v("CI_SERVER_VERSION_MINOR", 5), v("CI_SERVER_VERSION_PATCH", 0),
        v("CI_SERVER_REVISION", "f0f0f0f0f0f"), v("GITLAB_FEATURES", ""),
        v("CI_PROJECT_ID", project_id), v("CI_PROJECT_NAME", "mayfly-test"),
        v("CI_PROJECT_TITLE", "Mayfly Test"), v("CI_PROJECT_DESCRIPTION", ""),
        v("CI_PROJECT_PATH", project), v("CI_PROJECT_PATH_SLUG", "mayfly-mayfly-test"),
        v("CI_PROJECT_NAMESPACE", "mayfly"), v("CI_PROJECT_NAMESPACE_ID", 7),
        v("CI_PROJECT_ROOT_NAMESPACE", "mayfly"), v("CI_PROJECT_URL", f"{base}/{project}"),
        v("CI_PROJECT_VISIBILITY", "private"), v("CI_PROJECT_REPOSITORY_LANGUAGES", "swift"),
        v("CI_DEFAULT_BRANCH", "main"), v("CI_CONFIG_PATH", ".gitlab-ci.yml"),
        v("CI_API_V4_URL", f"{base}/api/v4"), v("CI_API_GRAPHQL_URL", f"{base}/api/graphql"),
        v("CI_PIPELINE_IID", job.id - 1000), v("CI_PIPELINE_SOURCE", "push"),
        v("CI_PIPELINE_CREATED_AT", started), v("CI_COMMIT_SHA", sha), v("CI_COMMIT_SHORT_SHA", sha[:8]),
        v("CI_COMMIT_BEFORE_SHA", "0" * 40), v("CI_COMMIT_REF_NAME", ref),
        v("CI_COMMIT_REF_SLUG", re.sub(r"[^a-z0-9]+", "-", ref.lower())), v("CI_COMMIT_BRANCH", ref),
        v("CI_COMMIT_MESSAGE", message), v("CI_COMMIT_TITLE", "Test commit for Mayfly"),
        v("CI_COMMIT_DESCRIPTION", message.split("\n", 2)[2]), v("CI_COMMIT_REF_PROTECTED", "false"),
        v("CI_COMMIT_TIMESTAMP", "2026-01-02T03:04:05+00:00"),
        v("CI_COMMIT_AUTHOR", "Mayfly Tester <tester@mayfly.test>"),
        v("GITLAB_USER_ID", 3), v("GITLAB_USER_EMAIL", "tester@mayfly.test"),
        v("GITLAB_USER_LOGIN", "tester"), v("GITLAB_USER_NAME", "Mayfly Tester"),
        v("CI_RUNNER_ID", runner["id"]), v("CI_RUNNER_DESCRIPTION", runner.get("description") or "mayfly"),
        v("CI_RUNNER_TAGS", json.dumps(runner.get("tag_list") or [])),
    ]
    for user in spec.get("variables", []):
        variables.append(v(user["key"], user.get("value", ""), public=bool(user.get("public", False)),
                           masked=bool(user.get("masked", False)), file=bool(user.get("file", False)),
                           raw=bool(user.get("raw", False))))
    steps = [{"name": "script", "script": list(spec.get("script", ["echo hello"])), "timeout": timeout,
              "when": "on_success", "allow_failure": False}]
    if spec.get("after_script"):
        steps.append({"name": "after_script", "script": list(spec["after_script"]), "timeout": timeout,
                      "when": "always", "allow_failure": True})
    image = spec.get("image")
    if isinstance(image, str):
        image = {"name": image, "entrypoint": None, "ports": [], "executor_opts": {}, "pull_policy": None}
    features = {"trace_sections": True, "failure_reasons": list(FAILURE_REASONS)}
    if spec.get("token_mask_prefixes"):
        features["token_mask_prefixes"] = list(spec["token_mask_prefixes"])
    payload = {
        "id": job.id, "token": job.token, "allow_git_fetch": True,
        "job_info": {
            "id": job.id, "name": name, "stage": stage, "pipeline_id": pipeline_id,
            "project_id": project_id, "project_name": "mayfly-test", "project_full_path": project,
            "namespace_id": 7, "root_namespace_id": 7, "organization_id": 1, "instance_id": 1,
            "instance_uuid": "0f0e0d0c-0b0a-4908-8706-050403020100", "user_id": 3, "scoped_user_id": None,
            "time_in_queue_seconds": round(time.time() - job.enqueued_at, 3),
            "project_jobs_running_on_instance_runners_count": "+Inf", "queue_size": len(STATE.queue),
            "queue_depth": 1,
        },
        "git_info": {
            "repo_url": repo_url, "ref": ref, "sha": sha, "before_sha": "0" * 40, "ref_type": "branch",
            "refspecs": [f"+refs/pipelines/{pipeline_id}:refs/pipelines/{pipeline_id}",
                         f"+refs/heads/{ref}:refs/remotes/origin/{ref}"],
            "depth": 20, "repo_object_format": "sha1", "protected": False,
        },
        "runner_info": {"timeout": runner_timeout, "runner_session_url": None},
        "variables": variables, "steps": steps, "hooks": [], "image": image,
        "services": spec.get("services", []), "artifacts": spec.get("artifacts", []),
        "cache": spec.get("cache", []),
        "credentials": [{"type": "registry", "url": "registry.mayfly.test",
                         "username": "gitlab-ci-token", "password": job.token}],
        "dependencies": spec.get("dependencies", []), "features": features,
    }
    if isinstance(spec.get("raw"), dict):
        deep_merge(payload, json.loads(json.dumps(spec["raw"])))
    if spec.get("malformed"):
        # Valid JSON that breaks the schema: steps is an object, not a list.
        payload["steps"] = {"name": "script", "script": "echo this is not a list"}
    return payload


def cancel(job, body):
    """Cancellation (§6): `canceling` only when the runner manager that took the job advertised
    features.cancel_gracefully (Ci::Build#supports_canceling?); otherwise straight to canceled."""
    mode = body.get("mode", "canceled")
    if mode not in ("canceling", "canceled"):
        raise HTTPAnswer(400, {"error": "mode must be canceling or canceled"})
    if job.state in FINISHED:
        raise HTTPAnswer(409, {"error": f"job is already {job.state}", "state": job.state})
    if job in STATE.queue:
        STATE.queue.remove(job)
    graceful = mode == "canceling" and job.state == "running" and job.features.get("cancel_gracefully") is True
    job.state = "canceling" if graceful else "canceled"
    job.awaiting_ack = False
    return {"id": job.id, "state": job.state}


def set_scenario(body):
    """Faults are appended to the pending list; the other keys replace the current values."""
    faults = body.pop("faults", [])
    if body.pop("clear_faults", False):  # ends an outage made of faults
        STATE.faults.clear()
    unknown = set(body) - set(DEFAULT_SCENARIO)
    if unknown or not isinstance(faults, list):
        raise HTTPAnswer(400, {"error": f"unknown scenario keys {sorted(unknown)}"})
    for key, value in body.items():
        want_bool = isinstance(DEFAULT_SCENARIO[key], bool)
        if isinstance(value, bool) != want_bool or not isinstance(value, (int, float)):
            raise HTTPAnswer(400, {"error": f"{key} must be a {'boolean' if want_bool else 'number'}"})
    for fault in faults:
        if not isinstance(fault, dict) or fault.get("endpoint", "any") not in FAULT_ENDPOINTS:
            raise HTTPAnswer(400, {"error": f"bad fault {fault!r}; endpoints: {sorted(FAULT_ENDPOINTS)}"})
        if not isinstance(fault.get("count", 1), int) or not isinstance(fault.get("status", 0), int):
            raise HTTPAnswer(400, {"error": f"fault {fault!r}: count and status must be integers"})
        if not fault.get("drop_connection") and "status" not in fault:
            raise HTTPAnswer(400, {"error": f"fault {fault!r} needs a status or drop_connection"})
        STATE.faults.append(dict(fault, endpoint=fault.get("endpoint", "any"), count=int(fault.get("count", 1))))
    STATE.scenario.update(body)
    return dict(STATE.scenario, faults=STATE.faults)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    ssl_context = None

    def finish_request(self, request, client_address):
        """TLS handshakes happen here, in the connection's own thread, so that a slow or
        failing client cannot stall the accept loop."""
        if self.ssl_context is None:
            return super().finish_request(request, client_address)
        try:
            request.settimeout(10)
            conn = self.ssl_context.wrap_socket(request, server_side=True)
            conn.settimeout(None)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(conn, client_address, self)
        except (ssl.SSLError, OSError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass


def main():
    global STATE, VERBOSE
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--client-ca", help="require a client certificate signed by this CA")
    parser.add_argument("--runner-token", default="glrt-test-runner-token")
    parser.add_argument("--registration-token", default="GR1348941-test-registration")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    VERBOSE = args.verbose
    STATE = State(args.runner_token, args.registration_token)

    server = Server(("127.0.0.1", 0), Handler)
    scheme = "http"
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(args.client_ca)
        server.ssl_context, scheme = context, "https"
    STATE.base_url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)

    def watch_stdin():  # exit when the test process that started us goes away
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
