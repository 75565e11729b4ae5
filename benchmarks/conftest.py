# The figures the targets are about (ratios measured interleaved inside a test, the sizes of what was timed) are in
# each benchmark's extra_info, which pytest-benchmark's table does not show: list them after it.
SHOWN = ("speedup", "ideal", "over", "ratio", "_ms", "_s", "_us", "seconds", "_pct", "_mb", "GBps", "calls", "fraction",
         "max_diff")


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    rows = []
    for b in getattr(session, "benchmarks", None) or ():
        info = {k: v for k, v in (getattr(b, "extra_info", None) or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and any(s in k for s in SHOWN)}
        if info:
            # the full name: two files have a test_cpp_speedup_over_naive
            rows.append(f"{b.fullname}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                     for k, v in info.items()))
    if rows:
        terminalreporter.write_sep("-", "figures recorded in extra_info (also in --benchmark-json)")
        for r in rows:
            terminalreporter.write_line(r)
