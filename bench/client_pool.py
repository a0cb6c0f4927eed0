"""The end of the lab benchmarks' client scripts (run with ``python -c`` in the
client namespace): ``concurrency`` threads take session numbers until
``sessions`` are done, each calling the script's ``session(i)``; then one
JSON line with the elapsed time, and one per session's result.

The script before it defines ``session``, ``sessions``, ``concurrency``, and
imports json, threading and time; ``lock``, ``nxt`` and ``results`` come from
here.
"""

SESSION_POOL = r"""
lock, nxt, results = threading.Lock(), [0], []

def worker():
    while True:
        with lock:
            i = nxt[0]
            nxt[0] += 1
        if i >= sessions:
            return
        r = session(i)
        with lock:
            results.append(r)

t0 = time.perf_counter()
threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"elapsed": time.perf_counter() - t0}))
for r in results: print(json.dumps(r))
"""
