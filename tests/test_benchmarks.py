"""Smoke test of the benchmark scripts (benchmarks/harness, overhead, studies).

Tiny on purpose: the digits task, one epoch, two optimizers, one seed.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from benchmarks.harness import compare, models, train
from benchmarks.harness import optimizers as registry
from benchmarks.harness import tasks as task_registry
from benchmarks.studies import cprop_breakdown, cprop_passes
from optax_adaptive import _cprop_stats


@pytest.fixture(name="tiny_digits")
def fixture_tiny_digits(monkeypatch):
  task = dataclasses.replace(
      task_registry.get_task("digits"), name="tiny-digits",
      make_model=lambda rngs: models.CNN2D(channels=8, rngs=rngs))
  monkeypatch.setitem(task_registry.TASKS, task.name, task)
  return task


def test_compare_writes_json_table_and_plots(tmp_path, tiny_digits,
                                             monkeypatch):
  missing = registry.OptimizerSpec(
      "not-there", "library", lambda spe, total: None, "missing module",
      requires=(("_no_such_module", "nothing"),))
  monkeypatch.setitem(registry.REGISTRY, missing.name, missing)
  assert registry.availability(missing) is not None

  compare.main(["--task", tiny_digits.name, "--optimizers",
                "sgd-step,adam,not-there", "--epochs", "1", "--seeds", "1",
                "--out", str(tmp_path)])

  out = tmp_path / tiny_digits.name
  record = json.loads((out / "sgd-step_seed0.json").read_text())
  assert record["epochs"] == 1
  assert record["steps_per_epoch"] == 1294 // 64
  assert 0.0 <= record["final_test_acc"] <= 1.0
  assert record["final_test_acc"] > 0.2  # learns something in one epoch
  assert np.isfinite(record["final_train_loss"])
  assert "learning_rate" in record["trace"]
  assert (out / "adam_seed0.json").exists()
  table = (out / "table.md").read_text()
  assert "| sgd-step | baseline |" in table
  assert "| adam | baseline |" in table
  assert "| not-there | library | skipped:" in table  # never silently dropped
  for png in ("train_loss.png", "test_acc.png", "traces.png"):
    assert (out / png).stat().st_size > 0


def test_report_rebuilds_the_table_from_stored_runs(tmp_path, tiny_digits):
  args = ["--task", tiny_digits.name, "--optimizers", "sgd,adam",
          "--epochs", "1", "--seeds", "2", "--out", str(tmp_path),
          "--no-plots"]
  compare.main(args)
  out = tmp_path / tiny_digits.name
  trained = (out / "table.md").read_text()
  (out / "table.md").unlink()

  compare.main([*args, "--report"])
  assert (out / "table.md").read_text() == trained

  (out / "adam_seed1.json").unlink()  # an incomplete optimizer is skipped
  compare.main([*args, "--report"])
  table = (out / "table.md").read_text()
  assert "| sgd | baseline |" in table
  assert "| adam | baseline | skipped: 1/2 runs of 1 epochs" in table


def test_quick_run_keeps_its_set_and_full_runs_every_entry():
  quick = compare._optimizer_names(None, full=False)
  assert quick == list(registry.QUICK)
  assert "sgd-step" in quick and "prodigy" in quick
  slow = [n for n, s in registry.REGISTRY.items() if not s.quick]
  assert slow and not set(slow) & set(quick)
  assert compare._optimizer_names(None, full=True) == list(registry.REGISTRY)
  assert compare._optimizer_names("all", full=False) == list(
      registry.REGISTRY)
  assert compare._optimizer_names(" sgd, adam ,", full=True) == ["sgd",
                                                                  "adam"]


def test_claims_compare_each_combination_with_its_base_seed_by_seed():
  def runs(*accs):
    return [{"seed": k, "final_test_acc": a, "steps_to_target_acc": None}
            for k, a in enumerate(accs)]

  records = {"sgd-step": runs(0.95, 0.96), "prodigy": runs(0.94, 0.97),
             "autodrop-prodigy": runs(0.96, 0.975)}
  text = compare.claims(records)
  line = next(x for x in text.splitlines()
              if x.startswith("- autodrop-prodigy (on prodigy)"))
  assert "vs prodigy 95.50 ± 1.50: +1.25 points" in line
  assert "paired by seed +1.25 ± 0.75, ahead on 2/2" in line
  assert "vs sgd-step 95.50 ± 0.50: +1.25 points" in line
  assert "cprop-prodigy" not in text  # no runs, no line
  records["prodigy-linear"] = runs(0.96, 0.96)
  line = next(x for x in compare.claims(records).splitlines()
              if x.startswith("- autodrop-prodigy (on prodigy)"))
  assert "vs prodigy-linear 96.00 ± 0.00: +0.75 points" in line


def test_lr_free_trace_and_plot(tmp_path):
  from benchmarks.studies import lr_free_plot

  tx = registry.get("autodrop-prodigy").make(12, 120)  # window of 2 steps
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update({"w": params["w"] - 0.5}, state, params)
    params = optax.apply_updates(params, updates)
  trace = registry.get("autodrop-prodigy").trace(state)
  d = float(optax.tree.get(state, "estim_lr"))
  assert float(trace["learning_rate"]) == d > 0
  assert float(trace["effective_lr"]) == d * float(
      trace["autodrop/lr_scale"])

  steps = list(range(1, 121, 3))
  n_drops = [float(s // 40) for s in steps]  # drops after steps 40 and 80

  def record(name):
    trace = {"learning_rate": {"step": steps, "value": [0.01] * len(steps)}}
    if name in lr_free_plot.AUTODROP:
      trace["autodrop/n_drops"] = {"step": steps, "value": n_drops}
      trace["autodrop/lr_scale"] = {
          "step": steps, "value": [0.95 ** n for n in n_drops]}
    return {"optimizer": name, "seed": 0, "epochs": 10,
            "steps_per_epoch": 12, "best_test_acc": 0.9, "trace": trace,
            "curves": {"epoch_test_acc": [0.8] * 10,
                       "epoch_train_loss": [0.1] * 10}}

  for name in lr_free_plot.NAMES:
    (tmp_path / "t").mkdir(exist_ok=True)
    (tmp_path / "t" / f"{name}_seed0.json").write_text(
        json.dumps(record(name)))
  run = lr_free_plot.load([tmp_path], "t", "autodrop-prodigy", 0)
  np.testing.assert_array_equal(lr_free_plot.drop_steps(run), [40, 82])
  assert "2 drops" in lr_free_plot.drop_summary(run)
  _, clock = lr_free_plot.update_scale(
      lr_free_plot.load([tmp_path], "t", "stairs-prodigy", 0))
  assert clock[0] == 1.0 and clock[-1] == 0.95 ** (118 // 20)
  lr_free_plot.main(["--results", str(tmp_path), "--task", "t", "--seeds",
                     "1", "--out", str(tmp_path / "p.png")])
  assert (tmp_path / "p.png").stat().st_size > 0


def test_training_is_deterministic_per_seed(tiny_digits):
  trainer = train.Trainer(tiny_digits, registry.get("sgd"), epochs=1)
  first, again, other = trainer.run(0), trainer.run(0), trainer.run(1)
  assert first["curves"] == again["curves"]
  assert first["curves"] != other["curves"]


def test_conv_matches_nnx_conv():
  for kernel_size, strides, shape in [((3,), (2,), (2, 7, 3)),
                                      ((3, 3), (2, 2), (2, 7, 9, 3))]:
    ours = models.Conv(shape[-1], 4, kernel_size, strides, rngs=nnx.Rngs(0))
    ref = nnx.Conv(shape[-1], 4, kernel_size=kernel_size, strides=strides,
                   rngs=nnx.Rngs(0))
    ref.bias[...] = ours.bias[...] = np.arange(4.0)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(jax.jit(ours)(x), jax.jit(ref)(x), atol=1e-5)
    np.testing.assert_array_equal(ours.kernel[...], ref.kernel[...])


def test_ratio_stats_pairs_rounds():
  from benchmarks.overhead import _timing

  # The machine slows down in round 2: paired ratios stay 1.5, the medians
  # of the raw times would not know which round to compare.
  samples = {"base": [1.0, 4.0, 1.0], "other": [1.5, 6.0, 1.5]}
  stats = _timing.ratio_stats(samples, "base")
  np.testing.assert_allclose(stats["other"].ratios, [1.5, 1.5, 1.5])
  assert stats["other"].median == 1.5
  assert stats["other"].quartiles == (1.5, 1.5)
  assert stats["other"].ms == 1.5
  np.testing.assert_allclose(stats["base"].ratios, 1.0)


def test_paired_ratios_runs_every_closure_and_counts_rounds():
  from benchmarks.overhead import _timing

  calls = {"a": 0, "b": 0}

  def make(name):
    def fn():
      calls[name] += 1
      return jax.numpy.zeros(())
    return fn

  stats = _timing.paired_ratios({"a": make("a"), "b": make("b")}, "a",
                                rounds=5, min_turn_s=0.0)
  assert len(stats["b"].ratios) == 5
  assert calls["a"] == calls["b"] == 3 + 5  # warm-up and calibration + rounds


@pytest.mark.slow  # compiles the CNN train step of every method
def test_train_step_timer_runs_an_optimizer_that_keeps_the_params():
  from benchmarks.overhead import _timing

  # prodigy's state holds the initial params; donating both used to fail
  # with "Attempt to donate the same buffer twice".
  step = _timing.mnist1d_train_step(optax.contrib.prodigy(), batch_size=16)
  losses = [float(step()) for _ in range(2)]
  assert np.all(np.isfinite(losses))


def test_overhead_table_prints_the_ratio_spread():
  from benchmarks import overhead

  row = {"method": "m", "case": "c", "time_ms": 2.0, "base": "b",
         "base_ms": 1.0, "ratio": 2.0, "target": 2.5}
  assert "| 2.00x |" in overhead.markdown_table([row])
  spread = dict(row, ratio_q1=1.9, ratio_q3=2.1)
  table = overhead.markdown_table([spread])
  assert "| 2.00x (1.90-2.10) | ≤ 2.50x | yes |" in table


def test_overhead_check_fails_only_beyond_its_margin(monkeypatch, capsys):
  from benchmarks import overhead

  def row(ratio, target):
    return {"method": "m", "case": f"r{ratio}", "time_ms": ratio,
            "base": "b", "base_ms": 1.0, "ratio": ratio, "target": target}

  within = [row(2.4, 2.0), row(9.0, None), row(1.0, 1.1)]
  assert overhead.check_failures(within) == []
  failures = overhead.check_failures([*within, row(4.3, 2.0)])
  assert len(failures) == 1 and "4.30x > 1.25 x target 2.00x" in failures[0]

  rows = {"fast": [row(1.9, 2.0)], "regressed": [row(4.3, 2.0)]}
  monkeypatch.setattr(overhead, "available_methods", lambda: ["cprop"])
  for name, expected_status in (("fast", 0), ("regressed", 1)):
    monkeypatch.setattr(overhead, "collect",
                        lambda *a, name=name, **k: rows[name])
    assert overhead.main(["--methods", "cprop", "--check"]) == expected_status
  assert "CHECK FAILED: m, r4.3" in capsys.readouterr().out


def test_cprop_breakdown_variants_run_and_tanh_swap_is_rounding_only():
  params = {"w": jnp.linspace(-1.0, 1.0, 64).reshape(8, 8)}
  updates = {}
  for variant in cprop_breakdown.VARIANTS:
    tx = cprop_breakdown.stripped_cprop_adam(variant)
    state = tx.init(params)
    for g in (0.3, -0.1, 0.2):
      u, state = jax.jit(tx.update)(
          jax.tree.map(lambda p, g=g: p * g + 0.01, params), state)
    updates[variant] = u["w"]
    assert np.all(np.isfinite(u["w"]))
  own, general = updates["no mean scale"], updates["no mean scale, jnp.tanh"]
  np.testing.assert_allclose(own, general, rtol=1e-6, atol=1e-12)
  assert not np.allclose(own, updates["scale 1"], rtol=1e-3)
  own_tanh = _cprop_stats.tanh_of_nonnegative
  with cprop_breakdown._general_tanh():
    assert _cprop_stats.tanh_of_nonnegative is jnp.tanh
  assert _cprop_stats.tanh_of_nonnegative is own_tanh


_SYNTHETIC_HLO = """\
HloModule m

%fused (p: f32[64]) -> f32[64] {
  ROOT %p = f32[64]{0} parameter(0)
}

ENTRY %main (a: f32[64], b: f32[64], s: f32[]) -> (f32[64], f32[64]) {
  %a = f32[64]{0} parameter(0)
  %b = f32[64]{0} parameter(1)
  %s = f32[] parameter(2)
  %ab = f32[8,8]{1,0} bitcast(%a)
  %two = (f32[64]{0}, f32[8,8]{1,0}) fusion(%a, %b, %s, %a), calls=%fused
  %sum = f32[] fusion(%b), kind=kLoop, calls=%fused
  %small = f32[4]{0} fusion(%s), kind=kLoop, calls=%fused
  %x = f32[64]{0} get-tuple-element(%two), index=0
  %c = f32[64]{0} copy(%x)
  ROOT %t = (f32[64]{0}, f32[64]{0}) tuple(%c, %x)
}
"""


def test_cprop_passes_counts_leaf_sized_reads_and_writes():
  loops = cprop_passes.leaf_loops(_SYNTHETIC_HLO, 64)
  assert loops == [
      cprop_passes.Loop("two", "fusion", reads=2, writes=2),
      cprop_passes.Loop("sum", "fusion", reads=1, writes=0),
      cprop_passes.Loop("c", "copy", reads=1, writes=1),
  ]


def test_cprop_passes_table_and_one_loop_adam_matches_optax():
  params = {"k": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4),
            "b": jnp.arange(5.0)}
  results = []
  for tx in (optax.adam(1e-2), cprop_passes.adam_as_one_loop(1e-2)):
    state = tx.init(params)
    for scale in (1.0, -0.5, 2.0):
      grads = jax.tree.map(lambda p, s=scale: jnp.sin(3 * p + s), params)
      updates, state = jax.jit(tx.update)(grads, state)
    results.append((updates, state))
  (expected, expected_state), (got, got_state) = results
  jax.tree.map(lambda e, g: np.testing.assert_allclose(g, e, rtol=1e-6),
               (expected, expected_state), (got, got_state))

  table = cprop_passes.markdown_table(4096).splitlines()
  passes = {row.split(" | ")[0][2:]: int(row.split(" | ")[4])
            for row in table[2:]}
  assert set(passes) == set(cprop_passes.optimizers())
  # Whatever XLA fuses, CProp reads and writes its m on top of Adam.
  assert passes["optax.adam"] >= 6
  assert passes["cprop_adam"] >= passes["optax.adam"] + 2
  assert passes["cprop(optax.adam)"] >= passes["optax.adam"] + 4


_HLO_WITH_CONTROL_FLOW = """\
HloModule m, entry_computation_layout={(f32[4]{0})->f32[4]{0}}

%fused (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %n = f32[4]{0} negate(%p)
}

%cond (c: (s32[], f32[4])) -> pred[] {
  %c = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%c), index=0
  %k = s32[] constant(3)
  ROOT %lt = pred[] compare(%i, %k), direction=LT
}

%body (b: (s32[], f32[4])) -> (s32[], f32[4]) {
  %b = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element(%b), index=0
  %x = f32[4]{0} get-tuple-element(%b), index=1
  %one = s32[] constant(1)
  %i2 = s32[] add(%i, %one)
  %x2 = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused
  ROOT %t = (s32[], f32[4]{0}) tuple(%i2, %x2)
}

%y (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  ROOT %f = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused
}

%n (e: f32[4]) -> f32[4] {
  ROOT %e = f32[4]{0} parameter(0)
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %f = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused
  %cc = f32[4]{0} custom-call(%f), custom_call_target="foo"
  %zero = s32[] constant(0)
  %init = (s32[], f32[4]{0}) tuple(%zero, %cc)
  %w = (s32[], f32[4]{0}) while(%init), condition=%cond, body=%body
  %v = f32[4]{0} get-tuple-element(%w), index=1
  %p = pred[] constant(true)
  %c = f32[4] conditional(%p, %v, %v), true_computation=%y, false_computation=%n
  %j = s32[] constant(1)
  %s = f32[4]{0} conditional(%j, %c, %c), branch_computations={%n, %y}
  ROOT %r = f32[4]{0} call(%s), to_apply=%y
}
"""


def test_gpu_suite_counts_kernels_through_control_flow():
  from benchmarks.overhead import gpu_suite

  # Entry: fusion, custom-call; loop: compare, add, fusion; the two
  # conditionals and the call: one fusion each. Fused computations count
  # as their fusion, free instructions not at all.
  assert gpu_suite.count_kernels(_HLO_WITH_CONTROL_FLOW) == {
      "kernels": 8, "while": 1, "conditional": 2}


def _records(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_gpu_suite_writes_each_group_at_once_and_keeps_to_its_budget(
    tmp_path, monkeypatch):
  from benchmarks.overhead import gpu_suite

  def interrupted():
    raise KeyboardInterrupt  # a time limit stops the run here

  fake = [
      gpu_suite.Group("s", "first", 0.0, lambda: [{"row": 1}]),
      gpu_suite.Group("s", "too long", 1e9, lambda: [{"row": 2}]),
      gpu_suite.Group("s", "stopped", 0.0, interrupted),
  ]
  monkeypatch.setattr(gpu_suite, "groups", lambda sections, quick: fake)
  out = tmp_path / "suite.jsonl"
  with pytest.raises(KeyboardInterrupt):
    gpu_suite.main(["--out", str(out), "--sections", "gpt"])
  records = _records(out)
  assert records[0]["header"] == "benchmarks.overhead.gpu_suite"
  assert records[1] == {"row": 1}
  assert records[2]["group"] == "first" and records[2]["wall_s"] >= 0
  assert records[3]["group"] == "too long"
  assert records[3]["skipped"].startswith("budget:")
  assert len(records) == 4  # nothing of the interrupted group, no end


def _check_suite_rows(records, sections):
  header = records[0]
  assert header["platform"] == jax.devices()[0].platform
  assert header["jax"] == jax.__version__ and header["jaxlib"]
  assert header["driver"] and header["device_kind"]
  assert records[-1]["end"] is True
  assert not [r for r in records if "error" in r or "skipped" in r]
  rows = [r for r in records if "ratio" in r]
  assert {r["section"] for r in rows} == set(sections)
  for r in rows:
    assert np.isfinite(r["ratio"]) and r["ratio"] > 0, r
    assert r["time_ms"] > 0 and r["base_ms"] > 0, r
  return rows


def _check_model_rows(rows, section, methods):
  from benchmarks.overhead import gpu_suite

  rows = [r for r in rows if r["section"] == section]
  assert {r["method"] for r in rows} == methods
  by_case = {(r["method"], r["case"].split(",")[0]): r for r in rows}
  for r in rows:
    assert r["kernels"] > 0 and r["base_kernels"] > 0, r
  # CProp's statistics are work on top of the base optimizer's.
  assert by_case["cprop", "train step"]["kernels"] > (
      by_case["cprop", "train step"]["base_kernels"])
  # AutoDrop's window end and LABPAL's measurement run inside loops.
  assert by_case["autodrop", "train step"]["loops"] >= 1
  assert by_case["labpal", "training step (1 FB)"]["loops"] >= 1
  targets = {r["target"] for r in rows if r["target"] is not None}
  assert targets == {gpu_suite.TRAIN_STEP_TARGET, gpu_suite.PAL_TARGET}


@pytest.mark.slow  # a ResNet-18 train step per method on the CPU
def test_gpu_suite_quick_runs_every_method_on_the_resnet(tmp_path):
  from benchmarks.overhead import gpu_suite

  out = tmp_path / "suite.jsonl"
  gpu_suite.main(["--quick", "--sections", "resnet18,single_leaf", "--out",
                  str(out)])
  records = _records(out)
  rows = _check_suite_rows(records, ["resnet18", "single_leaf"])
  _check_model_rows(rows, "resnet18",
                    {"adam", "sgd", "cprop", "autodrop", "adas", "pal",
                     "labpal"})
  adas = [r for r in rows if r["method"] == "adas"]
  assert [r["case"].split(",")[0] for r in adas] == [
      "train step", "epoch end alone (in SGD steps)",
      "epoch of 195 steps with its end"]
  leaf = [r["case"] for r in rows if r["section"] == "single_leaf"]
  assert leaf == ["update, cprop_adam, one leaf of 10,000 floats",
                  "update, cprop(adam), one leaf of 10,000 floats"]
  compiled = [r for r in records if r.get("info") == "compiled"]
  assert set(compiled[0]["compile_s"]) | set(compiled[1]["compile_s"]) == {
      "adam", "cprop_adam", "sgd", "cprop(sgd)", "autodrop", "pal", "labpal",
      "adas", "adas end"}
  table = gpu_suite.report(records)
  assert "| cprop | train step, cprop_adam, ResNet-18 (tiny)" in table
  assert "| resnet18 | labpal | training step (1 FB)" in table


@pytest.mark.slow
def test_gpu_suite_quick_runs_every_method_on_the_transformer(tmp_path):
  from benchmarks.overhead import gpu_suite

  out = tmp_path / "suite.jsonl"
  gpu_suite.main(["--quick", "--sections", "gpt", "--out", str(out)])
  rows = _check_suite_rows(_records(out), ["gpt"])
  _check_model_rows(rows, "gpt",
                    {"adam", "sgd", "cprop", "autodrop", "pal", "labpal"})
