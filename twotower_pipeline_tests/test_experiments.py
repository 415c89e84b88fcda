"""Champion and challenger end to end on the simulator, whose customers accept offers with a known
probability: runs of known quality (the simulator's own latent vectors, the same vectors blurred,
random vectors) are kept, gated and published through the store's paths; an experiment splits the
campaign's customers; simulated customers are served through `/invocations` and answer through
`/response` day after simulated day; each day is flattened and `online_metrics` computes the arms
and the experiment's always-valid verdict. One case detects a better challenger, the other stops
a worse one through the check and `experiment_sensor`; exposures per arm are counted exactly."""

import datetime as dt
import threading

import dagster as dg
import numpy as np
import pytest

from twotower_pipeline import experiments, offline, online, publishing
from twotower_pipeline.defs.experiments import experiment_sensor, start_experiment_job, stop_experiment_job
from twotower_pipeline.definitions import build_resources, defs
from twotower_pipeline.ingest.simulator import simulate_world
from twotower_pipeline.serving.app import create_app
from twotower_pipeline.store import embeddings, frames, names
from twotower_pipeline_tests.serving_client import keyed_client, keyed_settings

CAMPAIGN = "sim_experiment"
FLATTEN = [dg.AssetKey(["logging", "ecosystemruntime_flatten"]),
           dg.AssetKey(["logging", "ecosystemruntime_flatten_quarantine"])]
NUMBER_OFFERS = 3


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _keep_run(store, world, run_id: str, users, items) -> None:
    """A run of known quality, kept and gated the way a trained run is (its vectors through the
    publisher's check, its document, a passed gate verdict)."""
    publisher = embeddings.Publisher(store, publishing.DATABASE)
    publisher.write_run("user", run_id, list(world.customer_ids), _unit(users))
    publisher.write_run("item", run_id, list(world.offer_names), _unit(items))
    store.collection(names.RUNS).insert_one({"run_id": run_id, "predictor": CAMPAIGN})
    offline.save_offline_metrics(store, run_id, {"gate": {"passed": True, "reasons": []}})


@pytest.fixture
def world(store):
    world = simulate_world(n_customers=2000, n_offers=30, latent_dim=8, affinity_scale=3.0, seed=11)
    store.collection(names.OFFER_MATRIX).insert_many(frames.frame_to_documents(world.offer_matrix))
    for run_id, blur in (("sharp", 0.6), ("blurred", 0.9), ("random", None)):
        rng = np.random.default_rng(5)
        if blur is None:
            users, items = rng.normal(size=world.customer_latent.shape), rng.normal(size=world.offer_latent.shape)
        else:
            users = world.customer_latent + rng.normal(scale=blur, size=world.customer_latent.shape)
            items = world.offer_latent + rng.normal(scale=blur, size=world.offer_latent.shape)
        _keep_run(store, world, run_id, users, items)
    return world


class Clock:
    """The runtime's clock in simulated time: each reading a millisecond after the last."""

    def __init__(self):
        self.moment = None
        self._lock = threading.Lock()

    def __call__(self) -> dt.datetime:
        with self._lock:
            self.moment += dt.timedelta(milliseconds=1)
            return self.moment


def _serve_day(client, world, rng, day: dt.date, clock: Clock, requests: int) -> dict:
    """`requests` simulated customers served and answering on `day`; what each arm showed, and
    the expected accepts of what it showed (the simulator's accept probabilities)."""
    clock.moment = dt.datetime.combine(day, dt.time(9), tzinfo=dt.timezone.utc)
    shown = {}
    for customer in rng.choice(world.customer_ids, size=requests):
        reply = client.post("/invocations", json={"campaign": CAMPAIGN, "customer": str(customer),
                                                  "numberoffers": NUMBER_OFFERS})
        assert reply.status_code == 200, reply.text
        offers = [item["result"]["offer"] for item in reply.json()["final_result"]]
        probability = world.accept_probability([customer] * len(offers), offers)
        accepted = [offer for offer, p in zip(offers, probability) if rng.random() < p]
        if accepted:
            answer = client.post("/response", json={"uuid": reply.json()["uuid"],
                                                    "offers_accepted": [{"offer_name": o} for o in accepted]})
            assert answer.status_code == 200, answer.text
        shown.setdefault(str(customer), []).append(float(probability.sum()))
    return shown


def _materialise_day(resources, day: str) -> dg.ExecuteInProcessResult:
    assets = list(defs.assets)
    assert dg.materialize(assets, resources=resources, partition_key=day, selection=FLATTEN).success
    return dg.materialize(assets, resources=resources, partition_key=day, selection=["online_metrics"],
                          raise_on_error=False)


def _drain(runtime, store, presented: int) -> None:
    import time
    deadline = time.monotonic() + 60
    while store.collection(names.PRESENTED).count_documents({}) < presented and time.monotonic() < deadline:
        time.sleep(0.05)
    while runtime.journal.stats()["documents_pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.collection(names.PRESENTED).count_documents({}) == presented


def _run_experiment(store, mongo, world, tmp_path, monkeypatch, *, champion, challenger, days, requests=600,
                    then=None):
    """Serve `days` simulated days of an experiment (challenger on half the customers), each day
    flattened and measured; `then(client, runtime)` runs before the service stops."""
    resources = build_resources(mongo)
    publishing.publish_run(store, champion)
    clock = Clock()
    monkeypatch.setattr("twotower_pipeline.serving.routes.runtime.now", clock)
    monkeypatch.setattr("twotower_pipeline.serving.state.now", clock)
    monkeypatch.setattr("twotower_pipeline.experiments._now", clock)
    clock.moment = dt.datetime(2025, 3, 1, 8, tzinfo=dt.timezone.utc)
    result = start_experiment_job.execute_in_process(resources={"mongo": mongo}, run_config={"ops": {
        "start_experiment": {"config": {"experiment": "exp1", "campaign": CAMPAIGN,
                                        "challenger_run_id": challenger, "share": 0.5}}}})
    assert result.success
    app = create_app(store, keyed_settings(reload_s=3600, journal_dir=str(tmp_path / "journal"),
                                           vector_cache_dir=str(tmp_path / "vectors")))
    rng = np.random.default_rng(17)
    served, verdicts, presented = [], [], 0
    with keyed_client(app) as client:
        runtime = app.state.runtime
        assert [e.name for e, _ in runtime.experiments.values()] == ["exp1"]
        for day in [dt.date(2025, 3, 1) + dt.timedelta(days=i) for i in range(days)]:
            served.append(_serve_day(client, world, rng, day, clock, requests))
            presented += requests
            _drain(runtime, store, presented)
            outcome = _materialise_day(resources, day.isoformat())
            verdicts.append((outcome, experiments.get(store, "exp1")["verdicts"].get(day.isoformat())))
        if then is not None:
            then(client, runtime)
    return served, verdicts


def _print_looks(looks) -> None:
    """The looks as the README's table shows them (`pytest -s`)."""
    print("\n" + "\n".join(
        f"{v['day']}: champion {v['champion_accepts']}/{v['champion_exposures']} ({v['champion_customers']} "
        f"customers), challenger {v['challenger_accepts']}/{v['challenger_exposures']} ({v['challenger_customers']}), "
        f"difference {v['difference']:+.4f} ({v['low']:+.4f}..{v['high']:+.4f}), p {v['p_value']:.3g}: {v['decision']}"
        for v in looks))


def _arm_counts(served_days) -> dict:
    counts = {experiments.CHAMPION: 0, experiments.CHALLENGER: 0}
    for served in served_days:
        for customer, requests in served.items():
            counts[experiments.arm_of("exp1", customer, 0.5)] += NUMBER_OFFERS * len(requests)
    return counts


def test_an_experiment_detects_a_better_challenger_with_exact_counts_per_arm(store, mongo, world, tmp_path,
                                                                             monkeypatch):
    served, verdicts = _run_experiment(store, mongo, world, tmp_path, monkeypatch,
                                       champion="blurred", challenger="sharp", days=4)
    expected = _arm_counts(served)
    # every exposure is in online_metrics under its arm and run, exactly
    table = online_table(store)
    by_arm = table.groupby(["arm", "run_id"])["exposures"].sum().to_dict()
    assert by_arm == {(experiments.CHAMPION, "blurred"): expected[experiments.CHAMPION],
                      (experiments.CHALLENGER, "sharp"): expected[experiments.CHALLENGER]}
    assert store.collection(names.PRESENTED).count_documents({"arm": experiments.CHALLENGER, "run_id": "sharp"}) \
        == expected[experiments.CHALLENGER] // NUMBER_OFFERS
    # a look a day, cumulative, and the better challenger is found
    looks = [verdict for _, verdict in verdicts]
    assert [v["day"] for v in looks] == ["2025-03-01", "2025-03-02", "2025-03-03", "2025-03-04"]
    _print_looks(looks)
    assert looks[0]["decision"] == online.UNDECIDED  # one day is not enough to tell nine points apart
    assert looks[-1]["challenger_exposures"] == expected[experiments.CHALLENGER]
    assert looks[-1]["decision"] == online.BETTER and looks[-1]["low"] > 0
    assert all(outcome.get_asset_check_evaluations()[0].passed for outcome, _ in verdicts)
    # the interval holds the difference the simulator expects of what each arm showed
    truth = {arm: [] for arm in expected}
    for day in served:
        for customer, sums in day.items():
            truth[experiments.arm_of("exp1", customer, 0.5)] += sums
    true_difference = (sum(truth[experiments.CHALLENGER]) / expected[experiments.CHALLENGER]
                       - sum(truth[experiments.CHAMPION]) / expected[experiments.CHAMPION])
    assert looks[-1]["low"] <= true_difference <= looks[-1]["high"]
    # a win is reported, not acted on, unless the experiment allows promotion
    with dg.instance_for_test() as instance:
        skipped = experiment_sensor(dg.build_sensor_context(instance=instance, resources={"mongo": mongo}))
    assert isinstance(skipped, dg.SkipReason) and "significantly better" in skipped.skip_message


def online_table(store):
    from twotower_pipeline.defs.assets.online_metrics import ONLINE_METRICS
    from twotower_pipeline.store.slices import SlicedCollection
    return SlicedCollection(store, ONLINE_METRICS).read()


def test_a_worse_challenger_fails_the_check_and_the_sensor_stops_it(store, mongo, world, tmp_path, monkeypatch):
    def stop_and_serve(client, runtime):
        with dg.instance_for_test() as instance:
            result = experiment_sensor(dg.build_sensor_context(instance=instance, resources={"mongo": mongo}))
        [request] = result.run_requests
        assert request.job_name == "stop_experiment_job"
        assert stop_experiment_job.execute_in_process(resources={"mongo": mongo},
                                                      run_config=request.run_config).success
        runtime.reload()  # the service's reload thread does this every reload_s
        assert runtime.experiments == {}
        for customer in world.customer_ids[:40]:
            reply = client.post("/invocations", json={"campaign": CAMPAIGN, "customer": str(customer),
                                                      "numberoffers": NUMBER_OFFERS})
            assert reply.status_code == 200
        _drain(runtime, store, 2 * 600 + 40)

    _, verdicts = _run_experiment(store, mongo, world, tmp_path, monkeypatch, champion="sharp",
                                  challenger="random", days=2, then=stop_and_serve)
    _print_looks([verdict for _, verdict in verdicts])
    assert verdicts[0][1]["decision"] == online.WORSE  # found on the first day
    outcome, verdict = verdicts[-1]
    assert verdict["decision"] == online.WORSE and verdict["high"] < 0
    [check] = outcome.get_asset_check_evaluations()
    assert not check.passed and "exp1" in check.description
    record = experiments.get(store, "exp1")
    assert record["state"] == experiments.STOPPED and "significantly worse" in record["reason"]
    assert experiments.running(store) == []
    # after the stop the champion served everyone, outside any experiment
    assert store.collection(names.PRESENTED).count_documents({"arm": experiments.LIVE, "run_id": "sharp",
                                                              "experiment": None}) == 40


def test_one_experiment_per_campaign_and_what_is_refused(store, world):
    publishing.publish_run(store, "blurred")
    with pytest.raises(experiments.ExperimentError, match="is the live run"):
        experiments.start(store, "e0", CAMPAIGN, "blurred")
    offline.save_offline_metrics(store, "ungated", {"gate": {"passed": False, "reasons": ["ndcg below popularity"]}})
    with pytest.raises(experiments.ExperimentError, match="ndcg below popularity"):
        experiments.start(store, "e0", CAMPAIGN, "ungated")
    with pytest.raises(experiments.ExperimentError, match="strictly between 0 and 1"):
        experiments.start(store, "e0", CAMPAIGN, "sharp", share=1.0)
    with pytest.raises(experiments.ExperimentError, match="must be 1-80"):
        experiments.start(store, "bad name", CAMPAIGN, "sharp")
    # two operators start an experiment on the same campaign at once: one wins
    outcomes, barrier = [], threading.Barrier(2)

    def start(name, run_id):
        barrier.wait()
        try:
            experiments.start(store, name, CAMPAIGN, run_id)
            outcomes.append(name)
        except experiments.ExperimentError as error:
            outcomes.append(str(error))

    threads = [threading.Thread(target=start, args=args) for args in (("e1", "sharp"), ("e2", "random"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o in ("e1", "e2")]
    assert len(winners) == 1 and "already runs experiment" in [o for o in outcomes if o not in winners][0]
    assert [e.name for e in experiments.running(store)] == winners
    with pytest.raises(experiments.ExperimentError, match="exists already"):
        experiments.start(store, winners[0], "another_campaign", "sharp")
    with pytest.raises(experiments.ExperimentError, match="needs a reason"):
        experiments.stop(store, winners[0], " ")
    experiments.stop(store, winners[0], "enough")
    with pytest.raises(experiments.ExperimentError, match="is not running"):
        experiments.stop(store, winners[0], "again")
    experiments.start(store, "e3", CAMPAIGN, "random")  # the campaign is free again
    assert [e.name for e in experiments.running(store)] == ["e3"]


def test_promotion_publishes_the_challenger_and_a_failed_publish_keeps_the_experiment(store, world):
    publishing.publish_run(store, "blurred")
    experiments.start(store, "e1", CAMPAIGN, "sharp")
    # the challenger's gate verdict is withdrawn meanwhile: the publish refuses, the champion stays
    offline.save_offline_metrics(store, "sharp", {"gate": {"passed": False, "reasons": ["re-scored"]}})
    with pytest.raises(offline.GateError):
        experiments.promote(store, "e1")
    assert publishing.live_run_id(store) == "blurred" and experiments.get(store, "e1")["state"] == experiments.RUNNING
    offline.save_offline_metrics(store, "sharp", {"gate": {"passed": True, "reasons": []}})
    outcome = experiments.promote(store, "e1")
    assert outcome["run_id"] == "sharp" and publishing.live_run_id(store) == "sharp"
    record = experiments.get(store, "e1")
    assert record["state"] == experiments.PROMOTED and [e["event"] for e in record["history"]] == [
        "started", "promoting", "promotion_failed", "promoting", "promoted"]
    assert experiments.running(store) == []


def test_replay_of_logs_explored_by_the_live_run_lands_on_the_rate_the_candidate_then_gets(store, mongo, world,
                                                                                           tmp_path, monkeypatch):
    """The live run serves a day with epsilon exploration (each offer logged with its propensity);
    IPS, SNIPS and DR replay the candidate over that day's flattened exposures; then the candidate
    is published and serves the same customers, in the same order: the accept rate it gets lies
    within each estimator's interval."""
    from twotower_pipeline.serving.settings import CampaignSettings

    publishing.publish_run(store, "blurred")
    clock = Clock()
    monkeypatch.setattr("twotower_pipeline.serving.routes.runtime.now", clock)
    monkeypatch.setattr("twotower_pipeline.serving.state.now", clock)
    customers = np.random.default_rng(23).choice(world.customer_ids, size=3000)
    served = {}
    for day, epsilon in ((dt.date(2025, 3, 1), 0.5), (dt.date(2025, 3, 2), 0.0)):
        app = create_app(store, keyed_settings(
            reload_s=3600, journal_dir=str(tmp_path / f"journal-{day}"), vector_cache_dir=str(tmp_path / "vectors"),
            campaigns={CAMPAIGN: CampaignSettings(epsilon=epsilon)}, explore_seed=3))
        with keyed_client(app) as client:
            clock.moment = dt.datetime.combine(day, dt.time(9), tzinfo=dt.timezone.utc)
            rng = np.random.default_rng(29)
            shown = accepted = 0
            for customer in customers:
                reply = client.post("/invocations", json={"campaign": CAMPAIGN, "customer": str(customer),
                                                          "numberoffers": NUMBER_OFFERS}).json()
                offers = [item["result"]["offer"] for item in reply["final_result"]]
                taken = [o for o, p in zip(offers, world.accept_probability([customer] * len(offers), offers))
                         if rng.random() < p]
                if taken:
                    client.post("/response", json={"uuid": reply["uuid"],
                                                   "offers_accepted": [{"offer_name": o} for o in taken]})
                shown, accepted = shown + len(offers), accepted + len(taken)
            served[day] = accepted / shown
            _drain(app.state.runtime, store, len(customers) * (2 if epsilon == 0.0 else 1))
        if epsilon:
            assert dg.materialize(list(defs.assets), resources=build_resources(mongo), partition_key=day.isoformat(),
                                  selection=FLATTEN).success
            publishing.publish_run(store, "sharp")  # the candidate goes live for the second day
    from twotower_pipeline.store.slices import SlicedCollection
    logged = SlicedCollection(store, names.FLATTEN).read()
    assert len(logged) == 3 * len(customers) and logged["propensity"].notna().all()
    replayed = offline.replay(store, "sharp", logged, seed=1)
    assert replayed["available"] and replayed["rounds"] == len(logged)
    candidate_rate = served[dt.date(2025, 3, 2)]
    for name, found in replayed["estimates"].items():
        print(f"{name}: {found['value']:.4f} ({found['low']:.4f}..{found['high']:.4f}), {found['matching']} matching; "
              f"served {candidate_rate:.4f}")
        assert found["low"] <= candidate_rate <= found["high"], name
    # and the log's own rate (what the explored live run got) is not what the candidate gets
    assert not replayed["estimates"]["snips"]["low"] <= served[dt.date(2025, 3, 1)] <= \
        replayed["estimates"]["snips"]["high"]


def test_the_workbench_checks_an_experiment_before_launching_it_and_health_states_the_challengers_memory(
        store, world, tmp_path):
    publishing.publish_run(store, "blurred")
    offline.save_offline_metrics(store, "ungated", {"gate": {"passed": False, "reasons": ["auc 0.4"]}})
    experiments.start(store, "e1", CAMPAIGN, "sharp", share=0.25)
    experiments.start(store, "done", "other_campaign", "random")
    experiments.stop(store, "done", "enough")
    app = create_app(store, keyed_settings(reload_s=3600, journal_dir=str(tmp_path / "journal"),
                                           vector_cache_dir=str(tmp_path / "vectors")))
    base = "/api/v1/algorithms/two-tower/experiments"
    with keyed_client(app) as client:
        ungated = client.post(base, json={"experiment": "e2", "campaign": "c2", "challenger_run_id": "ungated"})
        busy = client.post(base, json={"experiment": "e2", "campaign": CAMPAIGN, "challenger_run_id": "random"})
        share = client.post(base, json={"experiment": "e2", "campaign": "c2", "challenger_run_id": "random",
                                        "share": 1.5})
        no_dagster = client.post(base, json={"experiment": "e2", "campaign": "c2", "challenger_run_id": "random"})
        unknown = client.post(f"{base}/nope/stop", json={"reason": "x"})
        ended = client.post(f"{base}/done/promote")
        listed = client.get(base).json()["experiments"]
        health = client.get("/health").json()
        runtime_key_only = client.get(base, headers={"X-API-Key": "test-runtime-key"})
    assert ungated.status_code == 409 and "auc 0.4" in ungated.text
    assert busy.status_code == 409 and "already runs experiment 'e1'" in busy.text
    assert share.status_code == 422 and "share" in share.text
    assert no_dagster.status_code == 503 and "no Dagster webserver configured" in no_dagster.text
    assert unknown.status_code == 404 and ended.status_code == 409 and "stopped" in ended.text
    assert {e["_id"]: e["state"] for e in listed} == {"e1": "running", "done": "stopped"}
    assert runtime_key_only.status_code == 401
    [running] = health["experiments"]
    assert running["experiment"] == "e1" and running["share"] == 0.25
    challenger = running["challenger_run"]
    assert challenger["run_id"] == "sharp" and challenger["customers"] == len(world.customer_ids)
    assert challenger["customer_vector_bytes"] > 0 and health["live_run"]["run_id"] == "blurred"


def test_the_split_is_stable_independent_per_experiment_and_near_its_share():
    customers = [f"c{i}" for i in range(20_000)]
    first = [experiments.arm_of("a", c, 0.3) for c in customers]
    assert first == [experiments.arm_of("a", c, 0.3) for c in customers]  # the same in every process
    share = first.count(experiments.CHALLENGER) / len(customers)
    assert abs(share - 0.3) < 0.015
    other = [experiments.arm_of("b", c, 0.3) for c in customers]
    both = sum(x == y == experiments.CHALLENGER for x, y in zip(first, other)) / len(customers)
    assert abs(both - 0.09) < 0.01  # another experiment draws its own split
    # a larger share keeps every customer the smaller one sent to the challenger
    wider = [experiments.arm_of("a", c, 0.5) for c in customers]
    assert all(w == experiments.CHALLENGER for f, w in zip(first, wider) if f == experiments.CHALLENGER)


def test_a_quiet_day_is_an_empty_slice_without_a_verdict(store, mongo, world, monkeypatch):
    publishing.publish_run(store, "blurred")
    monkeypatch.setattr("twotower_pipeline.experiments._now",
                        lambda: dt.datetime(2025, 3, 1, 8, tzinfo=dt.timezone.utc))
    experiments.start(store, "exp1", CAMPAIGN, "sharp")
    outcome = _materialise_day(build_resources(mongo), "2025-03-02")
    assert outcome.success
    [materialisation] = outcome.asset_materializations_for_node("online_metrics")
    assert materialisation.metadata["exposures"].value == 0
    assert "no exposures in both arms" in str(materialisation.metadata["notes"].value)
    [check] = outcome.get_asset_check_evaluations()
    assert check.passed and experiments.get(store, "exp1")["verdicts"] == {}
    assert len(online_table(store)) == 0


def test_two_promotions_never_publish_at_once_and_an_abandoned_one_is_taken_over(store, world):
    publishing.publish_run(store, "blurred")
    experiments.start(store, "e1", CAMPAIGN, "sharp")
    _, first = experiments.begin_promotion(store, "e1", owner={"by": "first"})
    with pytest.raises(experiments.ExperimentError, match="being promoted already"):
        experiments.promote(store, "e1")
    with pytest.raises(experiments.ExperimentError, match="being published; let the promotion finish"):
        experiments.stop(store, "e1", "no")
    assert publishing.live_run_id(store) == "blurred"
    # the first promoter died: past PROMOTION_STALE_S another takes over, and the first cannot finish it
    stale = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=experiments.PROMOTION_STALE_S + 1)
    store.collection(experiments.EXPERIMENTS).update_one({"_id": "e1"}, {"$set": {"promotion.started_at": stale}})
    assert experiments.promote(store, "e1")["run_id"] == "sharp"
    with pytest.raises(experiments.ExperimentError, match="taken over by another"):
        experiments.end_promotion(store, "e1", first, True, "late")
    record = experiments.get(store, "e1")
    assert record["state"] == experiments.PROMOTED and "promotion" not in record
    assert publishing.live_run_id(store) == "sharp"
    # an abandoned promotion can also be stopped (past the same wait), leaving the live run as it is
    experiments.start(store, "e2", CAMPAIGN, "random")
    experiments.begin_promotion(store, "e2")
    with pytest.raises(experiments.ExperimentError, match="one abandoned can be stopped"):
        experiments.stop(store, "e2", "changed our mind")
    store.collection(experiments.EXPERIMENTS).update_one({"_id": "e2"}, {"$set": {"promotion.started_at": stale}})
    stopped = experiments.stop(store, "e2", "its promoter died")
    assert stopped["state"] == experiments.STOPPED and stopped["reason"] == "its promoter died"
    assert experiments.running(store) == [] and publishing.live_run_id(store) == "sharp"
    # one that had published its challenger before its process died says so when stopped
    experiments.start(store, "e3", CAMPAIGN, "random")
    experiments.begin_promotion(store, "e3")
    publishing.publish_run(store, "random")
    store.collection(experiments.EXPERIMENTS).update_one({"_id": "e3"}, {"$set": {"promotion.started_at": stale}})
    assert "had published run random: it is live" in experiments.stop(store, "e3", "promoter died")["reason"]


def test_the_hourly_schedule_computes_a_day_once_its_flatten_is_committed(store, mongo):
    from twotower_pipeline.defs.jobs import daily_online_metrics_schedule

    tick = dt.datetime(2025, 3, 2, 0, 15, tzinfo=dt.timezone.utc)
    with dg.build_schedule_context(scheduled_execution_time=tick, resources={"mongo": mongo}) as context:
        waiting = daily_online_metrics_schedule(context)
    assert isinstance(waiting, dg.SkipReason) and "waiting for the flatten of 2025-03-01" in waiting.skip_message
    assert dg.materialize(list(defs.assets), resources=build_resources(mongo), partition_key="2025-03-01",
                          selection=FLATTEN).success  # committed now, after the day's end
    with dg.build_schedule_context(scheduled_execution_time=tick, resources={"mongo": mongo}) as context:
        [request] = daily_online_metrics_schedule(context)
    assert (request.partition_key, request.run_key) == ("2025-03-01", "online_metrics:2025-03-01")
    # a day flattened late is still picked up, days later (its run key keeps it to one run)
    later = tick + dt.timedelta(days=3)
    with dg.build_schedule_context(scheduled_execution_time=later, resources={"mongo": mongo}) as context:
        assert [r.partition_key for r in daily_online_metrics_schedule(context)] == ["2025-03-01"]
