# Celery baseline for Warren's benchmark: N echo tasks through one Celery worker (prefork,
# acks_late, PostgreSQL result backend, same RabbitMQ), timed from the first publish until the
# last result is stored. Run through benches/celery/run.sh, which makes the venv and the database.
import json, os, platform, signal, subprocess, sys, time
from datetime import datetime, timezone
from pathlib import Path

import celery, psycopg2
from celery import Celery
from celery.signals import worker_ready

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BROKER = os.environ.get("CELERY_BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
PG_DSN = os.environ.get("CELERY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/warren_celery")
# The worker subprocess inherits these, so it reads the same queue and ready file.
QUEUE = os.environ.setdefault("CELERY_BENCH_QUEUE", f"celery-bench-{os.getpid()}-{int(time.time())}")
READY = os.environ.setdefault("CELERY_BENCH_READY", str(ROOT / "target/bench/celery-worker.ready"))
CONFIRM = os.environ.get("CELERY_CONFIRM", "0") == "1"

app = Celery("warren_celery_bench", broker=BROKER, backend="db+" + PG_DSN.replace("postgresql://", "postgresql+psycopg2://", 1))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=4,
    task_default_queue=QUEUE,            # durable queue + direct exchange of the same name
    task_default_delivery_mode="persistent",
    task_serializer="json", result_serializer="json", accept_content=["json"],
    worker_enable_remote_control=False,  # no pidbox queue: the broker stays clean
    broker_connection_retry_on_startup=True,
    broker_transport_options={"confirm_publish": CONFIRM},
)


@app.task(name="bench.echo")
def echo(payload):
    return payload


@worker_ready.connect
def _mark_ready(**_):
    Path(READY).write_text("ready")


def stored(cur):
    cur.execute("SELECT count(*) FILTER (WHERE status = 'SUCCESS'), count(*) FILTER (WHERE status <> 'SUCCESS'),"
                " max(date_done) FROM celery_taskmeta")
    return cur.fetchone()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("N", 5000))
    conc = int(os.environ.get("CELERY_CONCURRENCY", os.cpu_count() or 2))
    out = Path(os.environ.get("CELERY_BENCH_OUT", ROOT / "target/bench/celery.json"))
    log_path = ROOT / "target/bench/celery-worker.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(READY).unlink(missing_ok=True)

    app.backend  # the database backend creates celery_taskmeta here, before the worker starts
    db = psycopg2.connect(PG_DSN); db.autocommit = True; cur = db.cursor()
    cur.execute("SHOW server_version"); pg_version = cur.fetchone()[0]
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        rabbit_version = conn.connection.server_properties.get("version", "?")
    payloads = [{"i": i, "pad": "x" * 44} for i in range(n)]  # ~64 bytes of JSON each
    setup = {"celery": celery.__version__, "python": platform.python_version(), "pool": "prefork",
             "concurrency": conc, "prefetch_multiplier": 4, "acks_late": True, "publisher_confirms": CONFIRM,
             "broker": f"RabbitMQ {rabbit_version} ({BROKER})", "backend": f"PostgreSQL {pg_version} ({PG_DSN})",
             "queue": QUEUE}
    print(f"celery {setup['celery']}, python {setup['python']}, worker: prefork, concurrency {conc}"
          f" (one process per slot), prefetch 4, acks_late, confirms {'on' if CONFIRM else 'off'}", file=sys.stderr)

    log = open(log_path, "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench", "worker", "-P", "prefork", "-c", str(conc),
         "-Q", QUEUE, "-n", f"{QUEUE}@%h", "--loglevel=WARNING",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=HERE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not Path(READY).exists():
            if worker.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"worker did not get ready; see {log_path}")
            time.sleep(0.1)
        print(f"worker ready (pid {worker.pid}); publishing {n} tasks to {QUEUE}", file=sys.stderr)

        t0_wall, t0 = datetime.now(timezone.utc).replace(tzinfo=None), time.monotonic()
        with app.producer_or_acquire() as producer:
            for p in payloads:
                echo.apply_async((p,), producer=producer)
        publish_s = time.monotonic() - t0

        done, failed, last, last_change = 0, 0, None, time.monotonic()
        while done + failed < n:
            time.sleep(0.5)
            now_done, failed, last = stored(cur)
            if now_done != done:
                done, last_change = now_done, time.monotonic()
            elif time.monotonic() - last_change > 60:
                break  # no progress for a minute: report what we have
        observed_s = time.monotonic() - t0
        # End = the last result's date_done (the worker's UTC clock, same machine) when it is sane,
        # else the moment the poll saw the count complete (up to 0.5 s late).
        end_s = (last - t0_wall).total_seconds() if last else None
        basis = "max(date_done)"
        if end_s is None or not (0 < end_s <= observed_s + 1):
            end_s, basis = observed_s, "poll"
    finally:
        try:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL); worker.wait()
        log.close()
        Path(READY).unlink(missing_ok=True)
        try:  # the run's queue and exchange go with it
            with app.connection_for_write() as conn:
                ch = conn.default_channel
                ch.queue_delete(QUEUE); ch.exchange_delete(QUEUE)
        except Exception as e:
            print(f"could not delete queue {QUEUE}: {e}", file=sys.stderr)

    figures = {"n": n, "stored": done, "failed": failed, "publish_s": round(publish_s, 3),
               "publish_per_s": round(n / publish_s, 1), "end_to_end_s": round(end_s, 3),
               "end_to_end_per_s": round(done / end_s, 1) if done else 0.0, "end_basis": basis,
               "setup": setup, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out.write_text(json.dumps(figures, indent=2) + "\n")

    print(f"\nCelery baseline: celery {setup['celery']}, Python {setup['python']}, broker {setup['broker']},")
    print(f"backend {setup['backend']}, acks_late, prefetch 4, persistent, confirms {'on' if CONFIRM else 'off'}\n")
    print(f"{'N':>8}  {'stored':>8}  {'worker':<22}  {'publish/s':>10}  {'end-to-end tasks/s':>18}  {'time':>8}")
    print(f"{n:>8,}  {done:>8,}  {'prefork, ' + str(conc) + ' processes':<22}  {n / publish_s:>10,.0f}"
          f"  {figures['end_to_end_per_s']:>18,.0f}  {end_s:>7.2f}s")
    print(f"\nend = {basis}; figures in {out}")
    if done != n:
        sys.exit(f"only {done}/{n} results stored ({failed} not SUCCESS)")


if __name__ == "__main__":
    main()
