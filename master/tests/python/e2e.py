#!/usr/bin/env python3
"""End-to-end checks of skiff-master with the official Kubernetes Python client.

    e2e.py <kubeconfig>

Uses the typed API (CoreV1Api, AppsV1Api, kubernetes.watch.Watch) the way applications do:
typed create, list with label and field selectors, read, the client's patch methods (strategic
merge, merge, JSON patch), replace with a stale resourceVersion, delete, watch from a
resourceVersion and resuming a watch, and errors as Status bodies.

Prints one line per check ("ok   <check>" or "FAIL <check>: <what the server did>"), keeps
going after a failure ("SKIP" for the checks that depend on the failed one), and exits 1 if any
check failed (2 if the whole run took too long). Every request has a timeout; a watchdog ends the run.

master/tests/python_client.rs runs it against a real skiff-master on both store backends;
cluster/install-deps.sh installs the client into /opt/skiff/pyenv.
"""

import json
import os
import queue
import sys
import threading
import time
import traceback
import uuid

import urllib3
from kubernetes import client, config, watch
from kubernetes.client import ApiException

# Seconds for one request, for a watch's server-side timeoutSeconds, and for the whole run.
REQUEST_TIMEOUT = 10
WATCH_SECONDS = 20
EVENT_WAIT = 10
RUN_DEADLINE = 180


class CheckFailed(Exception):
    """A check's expectation did not hold; the message says what the server did."""


class Skip(Exception):
    """A check cannot run because one it depends on failed."""


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def api_error(call, *args, **kwargs):
    """Runs a call that must fail; returns its ApiException."""
    try:
        result = call(*args, _request_timeout=REQUEST_TIMEOUT, **kwargs)
    except ApiException as e:
        return e
    raise CheckFailed(f"the call succeeded instead of failing; the server returned {summary(result)}")


def status_body(e):
    """The Status object of an ApiException's body (a dict), or a CheckFailed."""
    try:
        body = json.loads(e.body or "")
    except ValueError:
        raise CheckFailed(f"HTTP {e.status} with a body that is not JSON: {e.body!r}") from None
    expect(
        isinstance(body, dict) and body.get("kind") == "Status",
        f"HTTP {e.status} with a body that is not a Status: {e.body}",
    )
    return body


def expect_status(e, codes, reason=None):
    """Checks an ApiException's HTTP code, and that its body is a Status with a reason."""
    expect(e.status in codes, f"expected HTTP {' or '.join(map(str, codes))}, got {e.status}: {e.body}")
    body = status_body(e)
    expect(body.get("code") == e.status, f"Status.code {body.get('code')} differs from HTTP {e.status}")
    expect(body.get("reason"), f"Status has no reason: {e.body}")
    if reason is not None:
        expect(body["reason"] == reason, f"expected reason {reason}, got {body['reason']}: {e.body}")
    expect(body.get("message"), f"Status has no message: {e.body}")
    return body


def summary(obj):
    if hasattr(obj, "to_dict"):
        return json.dumps(obj.to_dict(), default=str)[:600]
    return repr(obj)[:600]


def rv(obj):
    return int(obj.metadata.resource_version)


class Run:
    def __init__(self):
        self.passed = 0
        self.failed = []
        self.skipped = []
        self.done = set()

    def check(self, name, needs=()):
        """Decorator: runs the function now as the check `name`."""

        def run(fn):
            missing = [n for n in needs if n not in self.done]
            try:
                if missing:
                    raise Skip(f"needs {', '.join(missing)}")
                fn()
            except Skip as e:
                self.skipped.append(name)
                print(f"SKIP {name}: {e}", flush=True)
            except CheckFailed as e:
                self.failed.append(name)
                print(f"FAIL {name}: {e}", flush=True)
            except ApiException as e:
                self.failed.append(name)
                print(f"FAIL {name}: unexpected HTTP {e.status} {e.reason}: {e.body}", flush=True)
            except urllib3.exceptions.HTTPError as e:  # timeouts, refused connections, TLS
                self.failed.append(name)
                print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
            except Exception as e:  # a bug in the check or a client-side error: show where
                self.failed.append(name)
                print(f"FAIL {name}: {type(e).__name__}: {e}", flush=True)
                traceback.print_exc(file=sys.stdout)
            else:
                self.passed += 1
                self.done.add(name)
                print(f"ok   {name}", flush=True)
            return fn

        return run


class PodWatch:
    """A Watch on one namespace's pod named "watched" in a thread; events arrive on a queue.

    The field selector keeps out pods the controllers create and delete meanwhile."""

    def __init__(self, core, ns, resource_version, seconds):
        self.events = queue.Queue()
        self.watch = watch.Watch()
        self.finished = threading.Event()

        def consume():
            try:
                for event in self.watch.stream(
                    core.list_namespaced_pod,
                    ns,
                    resource_version=resource_version,
                    field_selector="metadata.name=watched",
                    timeout_seconds=seconds,
                    # The server ends the watch after timeoutSeconds; the read timeout is a backstop.
                    _request_timeout=(REQUEST_TIMEOUT, seconds + REQUEST_TIMEOUT),
                ):
                    self.events.put(event)
            except Exception as e:  # reported through the queue
                self.events.put(e)
            finally:
                self.finished.set()

        self.thread = threading.Thread(target=consume, daemon=True)
        self.thread.start()

    def next(self, what):
        try:
            event = self.events.get(timeout=EVENT_WAIT)
        except queue.Empty:
            raise CheckFailed(f"no watch event within {EVENT_WAIT} s while waiting for {what}") from None
        if isinstance(event, Exception):
            raise CheckFailed(f"the watch failed while waiting for {what}: {type(event).__name__}: {event}")
        return event

    def rest(self, limit):
        """Every further event until the server ends the watch (within `limit` seconds)."""
        if not self.finished.wait(limit):
            raise CheckFailed(f"the server did not end the watch within {limit} s of its timeoutSeconds")
        events = []
        while not self.events.empty():
            event = self.events.get_nowait()
            if isinstance(event, Exception):
                raise CheckFailed(f"the watch failed: {type(event).__name__}: {event}")
            events.append(event)
        return events

    def stop(self):
        self.watch.stop()


def describe(events):
    return [(e["type"], e["object"].metadata.name, e["object"].metadata.resource_version) for e in events]


def main():
    if len(sys.argv) != 2:
        print("usage: e2e.py <kubeconfig>", file=sys.stderr)
        return 2

    def deadline_passed():
        print(f"FAIL the run did not finish within {RUN_DEADLINE} s (a request or watch hung)", flush=True)
        os._exit(2)

    watchdog = threading.Timer(RUN_DEADLINE, deadline_passed)
    watchdog.daemon = True
    watchdog.start()

    api = config.new_client_from_config(config_file=sys.argv[1])
    core = client.CoreV1Api(api)
    apps = client.AppsV1Api(api)
    T = REQUEST_TIMEOUT
    ns = f"py-e2e-{uuid.uuid4().hex[:8]}"
    run = Run()
    state = {}

    # --- typed create ----------------------------------------------------------------------
    @run.check("create namespace")
    def _():
        created = core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)), _request_timeout=T)
        expect(isinstance(created, client.V1Namespace), f"got {type(created).__name__}")
        expect(created.metadata.name == ns, f"created namespace is named {created.metadata.name}")
        expect(created.metadata.uid, f"no uid: {summary(created)}")

    @run.check("create ConfigMap", needs=["create namespace"])
    def _():
        for name, labels in [("settings", {"app": "web", "tier": "front"}), ("other", {"app": "db"})]:
            cm = client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=name, labels=labels),
                data={"mode": "fast", "old": "yes"},
            )
            created = core.create_namespaced_config_map(ns, cm, _request_timeout=T)
            expect(isinstance(created, client.V1ConfigMap), f"got {type(created).__name__}")
            expect(created.metadata.namespace == ns, f"namespace {created.metadata.namespace}")
            expect(created.metadata.uid and created.metadata.resource_version, f"no uid or resourceVersion: {summary(created)}")
            expect(created.metadata.creation_timestamp is not None, f"no creationTimestamp: {summary(created)}")
            expect(created.data == {"mode": "fast", "old": "yes"}, f"data {created.data}")

    @run.check("create Pod", needs=["create namespace"])
    def _():
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="web-0", labels={"app": "web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="busybox", command=["sleep", "3600"])]),
        )
        created = core.create_namespaced_pod(ns, pod, _request_timeout=T)
        expect(isinstance(created, client.V1Pod), f"got {type(created).__name__}")
        expect(created.spec.containers[0].image == "busybox", f"spec {summary(created.spec)}")
        expect(created.metadata.uid, f"no uid: {summary(created)}")

    @run.check("create Service", needs=["create namespace"])
    def _():
        svc = client.V1Service(
            metadata=client.V1ObjectMeta(name="web", labels={"app": "web"}),
            spec=client.V1ServiceSpec(
                selector={"app": "web"},
                ports=[client.V1ServicePort(name="http", port=80, target_port=8080, protocol="TCP")],
            ),
        )
        created = core.create_namespaced_service(ns, svc, _request_timeout=T)
        expect(isinstance(created, client.V1Service), f"got {type(created).__name__}")
        port = created.spec.ports[0]
        expect(port.port == 80 and str(port.target_port) == "8080", f"ports {summary(created.spec)}")

    @run.check("create Deployment", needs=["create namespace"])
    def _():
        dep = client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web", labels={"app": "web"}),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels={"app": "web"}),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels={"app": "web"}),
                    spec=client.V1PodSpec(
                        containers=[
                            client.V1Container(
                                name="web",
                                image="busybox:1.35",
                                ports=[client.V1ContainerPort(container_port=8080, name="http")],
                            ),
                            client.V1Container(name="sidecar", image="busybox:1.35", command=["sleep", "3600"]),
                        ]
                    ),
                ),
            ),
        )
        created = apps.create_namespaced_deployment(ns, dep, _request_timeout=T)
        expect(isinstance(created, client.V1Deployment), f"got {type(created).__name__}")
        expect(created.spec.replicas == 2, f"replicas {created.spec.replicas}")
        expect(created.metadata.generation == 1, f"generation {created.metadata.generation}")

    @run.check("create an existing ConfigMap: 409 AlreadyExists", needs=["create ConfigMap"])
    def _():
        cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings"))
        expect_status(api_error(core.create_namespaced_config_map, ns, cm), [409], "AlreadyExists")

    # --- list with selectors ---------------------------------------------------------------
    def names(items):
        return sorted(i.metadata.name for i in items)

    @run.check("list ConfigMaps with label selectors", needs=["create ConfigMap"])
    def _():
        for selector, want in [
            ("app=web", ["settings"]),
            ("app", ["other", "settings"]),
            ("app in (web,db),tier!=back", ["other", "settings"]),
            ("tier notin (front)", ["other"]),
            ("!tier", ["other"]),
            ("app=nothing", []),
        ]:
            listed = core.list_namespaced_config_map(ns, label_selector=selector, _request_timeout=T)
            expect(isinstance(listed, client.V1ConfigMapList), f"got {type(listed).__name__}")
            got = [n for n in names(listed.items) if n in ("settings", "other")]
            expect(got == want, f"label selector {selector!r} listed {names(listed.items)}, expected {want}")
            expect(listed.metadata.resource_version, f"list has no resourceVersion: {summary(listed.metadata)}")

    @run.check("list with field selector metadata.name", needs=["create ConfigMap", "create Pod"])
    def _():
        listed = core.list_namespaced_config_map(ns, field_selector="metadata.name=settings", _request_timeout=T)
        expect(names(listed.items) == ["settings"], f"metadata.name=settings listed {names(listed.items)}")
        listed = core.list_namespaced_config_map(ns, field_selector="metadata.name!=settings", _request_timeout=T)
        expect("settings" not in names(listed.items) and "other" in names(listed.items),
               f"metadata.name!=settings listed {names(listed.items)}")
        listed = core.list_namespaced_pod(ns, field_selector="metadata.name=web-0", label_selector="app=web", _request_timeout=T)
        expect(names(listed.items) == ["web-0"], f"pods with metadata.name=web-0,app=web: {names(listed.items)}")
        listed = core.list_config_map_for_all_namespaces(field_selector=f"metadata.namespace={ns}", label_selector="app", _request_timeout=T)
        expect(names(listed.items) == ["other", "settings"], f"all namespaces, metadata.namespace={ns}: {names(listed.items)}")

    # --- read ------------------------------------------------------------------------------
    @run.check("read", needs=["create ConfigMap", "create Pod", "create Service", "create Deployment"])
    def _():
        cm = core.read_namespaced_config_map("settings", ns, _request_timeout=T)
        expect(isinstance(cm, client.V1ConfigMap) and cm.data["mode"] == "fast", summary(cm))
        pod = core.read_namespaced_pod("web-0", ns, _request_timeout=T)
        expect(pod.spec.containers[0].name == "web", summary(pod))
        svc = core.read_namespaced_service("web", ns, _request_timeout=T)
        expect(svc.spec.selector == {"app": "web"}, summary(svc))
        dep = apps.read_namespaced_deployment("web", ns, _request_timeout=T)
        expect(isinstance(dep, client.V1Deployment), f"got {type(dep).__name__}")
        expect([c.name for c in dep.spec.template.spec.containers] == ["web", "sidecar"], summary(dep.spec))

    # --- patch -----------------------------------------------------------------------------
    @run.check("merge patch ConfigMap (_content_type=application/merge-patch+json)", needs=["create ConfigMap"])
    def _():
        before = core.read_namespaced_config_map("settings", ns, _request_timeout=T)
        patched = core.patch_namespaced_config_map(
            "settings",
            ns,
            {"metadata": {"labels": {"patched": "merge"}}, "data": {"mode": "slow", "old": None}},
            _content_type="application/merge-patch+json",
            _request_timeout=T,
        )
        expect(patched.data == {"mode": "slow"}, f"data after the merge patch: {patched.data} (null should delete 'old')")
        expect(patched.metadata.labels == {"app": "web", "tier": "front", "patched": "merge"},
               f"labels after the merge patch: {patched.metadata.labels}")
        expect(rv(patched) > rv(before), f"resourceVersion {before.metadata.resource_version} -> {patched.metadata.resource_version}")

    @run.check("JSON patch ConfigMap (a list body)", needs=["create ConfigMap"])
    def _():
        patched = core.patch_namespaced_config_map(
            "other", ns, [{"op": "add", "path": "/data/extra", "value": "1"}], _request_timeout=T
        )
        expect(patched.data.get("extra") == "1", f"data after the JSON patch: {patched.data}")

    @run.check("strategic merge patch Deployment labels", needs=["create Deployment"])
    def _():
        patched = apps.patch_namespaced_deployment(
            "web", ns, {"metadata": {"labels": {"tier": "backend"}}}, _request_timeout=T
        )
        expect(patched.metadata.labels == {"app": "web", "tier": "backend"}, f"labels after the patch: {patched.metadata.labels}")
        expect(patched.metadata.generation == 1, f"a label change moved generation to {patched.metadata.generation}")

    @run.check("strategic merge patch Deployment containers by name (merge key)", needs=["create Deployment"])
    def _():
        patched = apps.patch_namespaced_deployment(
            "web",
            ns,
            {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "busybox:1.36"}]}}}},
            _request_timeout=T,
        )
        containers = patched.spec.template.spec.containers
        got = [(c.name, c.image, [p.container_port for p in (c.ports or [])]) for c in containers]
        want = [("web", "busybox:1.36", [8080]), ("sidecar", "busybox:1.35", [])]
        expect(
            sorted(got) == sorted(want),
            f"containers after patching only 'web': {got}, expected {want} (the server seems to replace "
            "the list as a merge patch does instead of merging by the 'name' key)",
        )
        expect(patched.metadata.generation == 2, f"a template change left generation at {patched.metadata.generation}")

    # --- replace ---------------------------------------------------------------------------
    @run.check("replace ConfigMap; stale resourceVersion: 409 Conflict", needs=["create ConfigMap"])
    def _():
        current = core.read_namespaced_config_map("other", ns, _request_timeout=T)
        current.data = {"replaced": "1"}
        replaced = core.replace_namespaced_config_map("other", ns, current, _request_timeout=T)
        expect(replaced.data == {"replaced": "1"}, f"data after replace: {replaced.data}")
        expect(rv(replaced) > rv(current), f"resourceVersion {current.metadata.resource_version} -> {replaced.metadata.resource_version}")
        current.data = {"replaced": "2"}  # still carries the old resourceVersion
        body = expect_status(api_error(core.replace_namespaced_config_map, "other", ns, current), [409], "Conflict")
        after = core.read_namespaced_config_map("other", ns, _request_timeout=T)
        expect(after.data == {"replaced": "1"}, f"the rejected replace changed data to {after.data}")
        state["conflict"] = body["message"]

    # --- delete ----------------------------------------------------------------------------
    @run.check("delete; read: 404 NotFound", needs=["create ConfigMap", "create Service", "create Deployment"])
    def _():
        status = core.delete_namespaced_config_map("settings", ns, _request_timeout=T)
        expect(status is not None, "delete returned nothing")
        expect_status(api_error(core.read_namespaced_config_map, "settings", ns), [404], "NotFound")
        core.delete_namespaced_service("web", ns, _request_timeout=T)
        expect_status(api_error(core.read_namespaced_service, "web", ns), [404], "NotFound")
        apps.delete_namespaced_deployment("web", ns, propagation_policy="Background", _request_timeout=T)
        expect_status(api_error(apps.read_namespaced_deployment, "web", ns), [404], "NotFound")
        expect_status(api_error(core.delete_namespaced_config_map, "settings", ns), [404], "NotFound")

    # --- watch -----------------------------------------------------------------------------
    @run.check("watch pods from a list's resourceVersion: ADDED, MODIFIED, DELETED in order", needs=["create namespace"])
    def _():
        listed = core.list_namespaced_pod(ns, _request_timeout=T)
        start = listed.metadata.resource_version
        expect(start, f"pod list has no resourceVersion: {summary(listed.metadata)}")
        w = PodWatch(core, ns, start, WATCH_SECONDS)
        try:
            pod = client.V1Pod(
                metadata=client.V1ObjectMeta(name="watched", labels={"step": "created"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
            )
            core.create_namespaced_pod(ns, pod, _request_timeout=T)
            core.patch_namespaced_pod("watched", ns, {"metadata": {"labels": {"step": "modified"}}}, _request_timeout=T)
            core.delete_namespaced_pod("watched", ns, grace_period_seconds=0, _request_timeout=T)
            events = [w.next("ADDED"), w.next("MODIFIED"), w.next("DELETED")]
        finally:
            w.stop()
        got = describe(events)
        expect([(t, n) for t, n, _ in got] == [("ADDED", "watched"), ("MODIFIED", "watched"), ("DELETED", "watched")],
               f"events {got}")
        expect(all(isinstance(e["object"], client.V1Pod) for e in events), "events do not carry V1Pod objects")
        rvs = [int(v) for _, _, v in got]
        expect(rvs[0] > int(start) and rvs == sorted(set(rvs)),
               f"resourceVersions {rvs} do not increase from the list's {start}")
        expect(events[1]["object"].metadata.labels == {"step": "modified"}, f"MODIFIED object: {summary(events[1]['object'])}")
        state["watched"] = got

    @run.check("resume a watch from a resourceVersion in the middle: exactly the later events",
               needs=["watch pods from a list's resourceVersion: ADDED, MODIFIED, DELETED in order"])
    def _():
        added_rv = state["watched"][0][2]
        seconds = 2
        w = PodWatch(core, ns, added_rv, seconds)
        events = w.rest(seconds + EVENT_WAIT)
        got = describe(events)
        expect(got == state["watched"][1:], f"resuming at {added_rv} gave {got}, expected {state['watched'][1:]}")

    # --- errors ----------------------------------------------------------------------------
    @run.check("invalid name: 422 Invalid Status", needs=["create namespace"])
    def _():
        cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name"))
        body = expect_status(api_error(core.create_namespaced_config_map, ns, cm), [422, 400])
        expect(body["reason"] == "Invalid", f"reason {body['reason']}")
        expect((body.get("details") or {}).get("name") == "Bad_Name", f"details {body.get('details')}")

    @run.check("Pod without containers: 422 Invalid Status", needs=["create namespace"])
    def _():
        pod = client.V1Pod(metadata=client.V1ObjectMeta(name="empty"), spec=client.V1PodSpec(containers=[]))
        try:
            created = core.create_namespaced_pod(ns, pod, _request_timeout=T)
        except ApiException as e:
            expect_status(e, [422, 400])
        else:
            core.delete_namespaced_pod("empty", ns, grace_period_seconds=0, _request_timeout=T)
            raise CheckFailed(
                "the server accepted a pod with no containers (created it at resourceVersion "
                f"{created.metadata.resource_version}) instead of answering 422 Invalid"
            )

    @run.check("read in a missing namespace: 404 NotFound", needs=["create namespace"])
    def _():
        expect_status(api_error(core.read_namespaced_config_map, "x", f"{ns}-missing"), [404], "NotFound")

    print(f"{run.passed} passed, {len(run.failed)} failed, {len(run.skipped)} not run", flush=True)
    if run.failed:
        print("failed: " + "; ".join(run.failed), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"took {time.monotonic() - started:.1f} s", flush=True)
    sys.exit(code)
