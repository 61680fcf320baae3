#!/usr/bin/env python3
"""Smoke test of the built handlers in plugins/dist, under a tiny host written with wasmtime-py.

This is the guest side's own check that each example behaves as documented (outputs,
failures, checkpoints, context, cleanup, panic logging, traps); it is not the real host,
whose loader tests live in the host crate. Usage: python3 smoke.py [KIND ...]
Needs `pip install wasmtime` (setup-toolchain.sh pins it). Exits non-zero on the first
mismatch.
"""

import json
import os
import sys
import time

import wasmtime
import wasmtime.component as wc

DIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dist")
PKG = "handyman:task"
VERSION = "0.1.0"

# Plenty for every finishing handler; a runaway one burns it in about a second.
FUEL = 2_000_000_000
MEMORY_LIMIT = 64 << 20


class Host:
    """What the real host keeps per task: the stored checkpoint, and per attempt the logs,
    the context and the progress reports."""

    def __init__(self):
        self.checkpoint = None
        self.logs = []
        self.context = {}
        self.progress = []

    def new_attempt(self):
        self.logs = []
        self.context = {}
        self.progress = []


def make_engine():
    config = wasmtime.Config()
    config.wasm_component_model = True
    config.consume_fuel = True
    return wasmtime.Engine(config)


def make_linker(engine, host, wasi):
    linker = wc.Linker(engine)
    if wasi:
        linker.add_wasip2()

    def save(_store, state):
        host.checkpoint = bytes(state)
        return None

    def ctx_set(_store, key, value):
        host.context[key] = value

    def ctx_get(_store, key):
        return host.context.get(key)

    def ctx_remove(_store, key):
        host.context.pop(key, None)

    def log_write(_store, level, message):
        host.logs.append((level, message))

    def report(_store, fraction):
        host.progress.append(fraction)

    with linker.root() as root:
        with root.add_instance(f"{PKG}/types@{VERSION}"):
            pass
        with root.add_instance(f"{PKG}/checkpoint@{VERSION}") as i:
            i.add_func("save", save)
        with root.add_instance(f"{PKG}/context@{VERSION}") as i:
            i.add_func("set", ctx_set)
            i.add_func("get", ctx_get)
            i.add_func("remove", ctx_remove)
        with root.add_instance(f"{PKG}/log@{VERSION}") as i:
            i.add_func("write", log_write)
        with root.add_instance(f"{PKG}/progress@{VERSION}") as i:
            i.add_func("report", report)
    return linker


def lift_run_result(value):
    """wasmtime-py leaves a variant untagged when its cases have distinct Python types: here
    the result's ok side (bytes | None | int) and its err side (a tagged `failure`)."""
    if isinstance(value, wc.Variant):
        return ("err", (value.tag, value.payload))
    if isinstance(value, bytes):
        return ("ok", ("done", value))
    if value is None:
        return ("ok", ("continue-later", None))
    return ("ok", ("retry-after", value))


class Plugin:
    def __init__(self, engine, kind):
        self.kind = kind
        self.engine = engine
        self.host = Host()
        started = time.monotonic()
        self.component = wc.Component.from_file(engine, os.path.join(DIST, f"{kind}.wasm"))
        self.compile_s = time.monotonic() - started
        self.linker = make_linker(engine, self.host, wasi=kind.startswith("py-"))

    def _instance(self, fuel):
        # A fresh store per call, as the host does: a trapped instance cannot be re-entered.
        store = wasmtime.Store(self.engine)
        store.set_fuel(fuel)
        store.set_limits(memory_size=MEMORY_LIMIT)
        if self.kind.startswith("py-"):
            store.set_wasi(wasmtime.WasiConfig())
        return store, self.linker.instantiate(store, self.component)

    def run(self, payload=b"", attempt=1, task_id=7, deadline_ms=60_000, fuel=FUEL):
        """Returns ("ok", outcome) / ("err", failure) as (tag, payload) pairs, or
        ("trap", message)."""
        self.host.new_attempt()
        store, instance = self._instance(fuel)
        task = wc.Record()
        task.id = task_id
        task.kind = self.kind
        task.attempt = attempt
        task.payload = payload
        task.checkpoint = self.host.checkpoint
        setattr(task, "deadline-ms", deadline_ms)
        func = instance.get_func(store, "run")
        try:
            result = func(store, task)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            return ("trap", str(e))
        return lift_run_result(result)

    def cleanup(self, context, reason):
        self.host.logs = []
        store, instance = self._instance(FUEL)
        entries = []
        for key, value in context.items():
            entry = wc.Record()
            entry.key = key
            entry.value = value
            entries.append(entry)
        return instance.get_func(store, "cleanup")(store, entries, reason)


def expect(what, got, want):
    if got != want:
        sys.exit(f"FAIL {what}: got {got!r}, want {want!r}")
    print(f"ok   {what}")


def expect_true(what, cond, detail=""):
    if not cond:
        sys.exit(f"FAIL {what} {detail}")
    print(f"ok   {what}")


def check_noop(p):
    expect("noop returns done(empty)", p.run(b"anything"), ("ok", ("done", b"")))


def check_echo(p, kind="echo"):
    expect(f"{kind} echoes", p.run(b'{"a": [1, 2]}'), ("ok", ("done", b'{"a": [1, 2]}')))
    expect(f"{kind} echoes empty", p.run(b""), ("ok", ("done", b"")))


def check_flaky(p):
    payload = b'{"failures": 2}'
    for attempt in (1, 2):
        expect(
            f"flaky attempt {attempt} fails transiently",
            p.run(payload, attempt=attempt),
            ("err", ("transient", f"flaky: planned failure {attempt} of 2")),
        )
    expect(
        "flaky attempt 3 succeeds",
        p.run(payload, attempt=3),
        ("ok", ("done", b'{"succeeded_on_attempt":3,"planned_failures":2}')),
    )
    expect(
        "flaky asks for retry-after when told to",
        p.run(b'{"failures": 1, "retry_after_ms": 250}', attempt=1),
        ("ok", ("retry-after", 250)),
    )
    tag, (kind, message) = p.run(b'{"failures": "x"}')
    expect("flaky bad payload is fatal", (tag, kind), ("err", "fatal"))
    expect_true("flaky fatal message names the problem", "invalid JSON payload" in message,
                message)


def check_table_copy(p):
    def finish(payload, first_attempt=1, deadline_ms=60_000):
        attempt = first_attempt
        while True:
            tag, (kind, value) = p.run(payload, attempt=attempt, deadline_ms=deadline_ms)
            if (tag, kind) == ("ok", "done"):
                return value, attempt
            expect_true(f"table-copy attempt {attempt} continues later",
                        (tag, kind) == ("ok", "continue-later"), repr((tag, kind, value)))
            expect("table-copy context freed on return", p.host.context, {})
            attempt += 1

    p.host.checkpoint = None
    reference, attempts = finish(b'{"rows": 1000, "batch": 100}')
    expect("table-copy uninterrupted takes one attempt", attempts, 1)
    out = json.loads(reference)
    expect("table-copy output", out, {"rows_copied": 1000, "checksum": "4237a6fdcc1956bf"})
    expect("table-copy progress reaches 1.0", p.host.progress[-1], 1.0)

    p.host.checkpoint = None
    sliced, attempts = finish(b'{"rows": 1000, "batch": 100, "batches_per_attempt": 3}')
    expect("table-copy sliced output equals uninterrupted", sliced, reference)
    expect("table-copy sliced attempts", attempts, 4)

    p.host.checkpoint = None
    # 10 ms a batch with 100 ms left: 80 ms usable, so 8 batches an attempt.
    budget, attempts = finish(b'{"rows": 1000, "batch": 100, "batch_cost_ms": 10}',
                              deadline_ms=100)
    expect("table-copy deadline-budget output equals uninterrupted", budget, reference)
    expect("table-copy deadline-budget attempts", attempts, 2)

    p.host.checkpoint = None
    stalled = b'{"rows": 1000, "batch": 100, "stall_attempts": 1}'
    tag, detail = p.run(stalled, attempt=1, fuel=50_000_000)
    expect("table-copy stalled attempt traps (out of fuel)", tag, "trap")
    expect("table-copy stalled attempt kept its query id", p.host.context,
           {"query-id": "copy-7-1"})
    expect("table-copy checkpoint before the stall", json.loads(p.host.checkpoint)["next_row"],
           100)
    result = p.cleanup(p.host.context, "timeout")
    expect("table-copy cleanup ok", result, None)
    expect_true("table-copy cleanup logs what it frees",
                any("freeing query copy-7-1" in m for _, m in p.host.logs), p.host.logs)
    resumed, attempts = finish(stalled, first_attempt=2)
    expect("table-copy resumed output equals uninterrupted", resumed, reference)
    expect("table-copy resumed in one attempt", attempts, 2)
    p.cleanup({}, "cancelled")
    expect_true("table-copy cleanup without context says so",
                any("nothing to free" in m for _, m in p.host.logs), p.host.logs)

    tag, (kind, message) = p.run(b'{"rows": 10}')
    expect("table-copy missing field is fatal", (tag, kind), ("err", "fatal"))
    expect_true("table-copy fatal message names the field", "batch" in message, message)


def check_trap(p, what, payload=b"", fuel=FUEL):
    tag, detail = p.run(payload, fuel=fuel)
    expect_true(f"{what} traps", tag == "trap", repr(detail))
    # wasmtime's message ends with the cause after a backtrace; show which trap it was.
    print(f"       {detail.strip().splitlines()[-1].strip()[:150]}")
    return detail


def check_spin(p):
    check_trap(p, "spin (out of fuel)", fuel=100_000_000)


def check_memory_hog(p):
    check_trap(p, f"memory-hog (limit {MEMORY_LIMIT >> 20} MiB)")


def check_panic(p):
    check_trap(p, "panic with payload message", b'{"message": "boom 42"}')
    expect_true("panic message logged at error level",
                any(level == "error" and m.startswith("handler panicked at ")
                    and m.endswith(": boom 42") for level, m in p.host.logs), p.host.logs)
    check_trap(p, "panic with fixed message", b"not json")
    expect_true("fixed panic message logged",
                any("deliberate panic" in m for _, m in p.host.logs), p.host.logs)


def check_stack_overflow(p):
    detail = check_trap(p, "stack-overflow (wasm call stack)")
    expect_true("stack-overflow exhausts the wasm call stack", "call stack exhausted" in detail,
                detail[-200:])
    detail = check_trap(p, "stack-overflow (shadow stack)", b'{"shadow": true}')
    expect_true("stack-overflow runs off its shadow stack",
                "out of bounds memory access" in detail, detail[-200:])


CHECKS = {
    "noop": check_noop,
    "echo": check_echo,
    "flaky": check_flaky,
    "table-copy": check_table_copy,
    "spin": check_spin,
    "memory-hog": check_memory_hog,
    "panic": check_panic,
    "stack-overflow": check_stack_overflow,
    "py-echo": lambda p: check_echo(p, "py-echo"),
}


def main():
    kinds = sys.argv[1:] or list(CHECKS)
    engine = make_engine()
    for kind in kinds:
        plugin = Plugin(engine, kind)
        print(f"--   {kind} (compiled in {plugin.compile_s:.1f} s)")
        CHECKS[kind](plugin)
    print(f"{len(kinds)} passed, 0 failed")


if __name__ == "__main__":
    main()
