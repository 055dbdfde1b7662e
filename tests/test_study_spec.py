"""The study file: typed like the run configs, with errors that name the key; every shipped study is valid."""

import math
from importlib import resources
from pathlib import Path

import pytest

from meter.cli import main
from meter.errors import ConfigError
from meter.study.cells import plan_study
from meter.study.report_text import not_run
from meter.study.spec import load_study, study_from_dict, study_rows
from meter.train.distributed import split_global_batch
from tests.studies import micro_study, write_study

SHIPPED = sorted(p.name for p in resources.files("meter.studies").iterdir() if p.name.endswith(".yaml"))


def test_an_unknown_key_is_an_error_naming_it_and_the_allowed_ones(tmp_path):
    study = micro_study(tmp_path)
    study["base"]["tasks"]["vqa"]["stepz"] = 3
    path = write_study(tmp_path / "study.yaml", study)
    unknown = r"study\.yaml: base\.tasks\.vqa\.stepz is not a setting \(did you mean 'steps'"
    with pytest.raises(ConfigError, match=unknown):
        load_study(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [("variants:\n  - name: merged\n    overrides: [model.fusion=merged]\n    overrides: [train.warmup_ratio=0.0]\n",
      r"study\.yaml:4:5: 'overrides' is set twice in one section"),
     ("seeds: [0, 010]\n", r"study\.yaml:1:12: '010' is read by YAML as an octal")],
)  # fmt: skip
def test_a_key_set_twice_or_an_octal_number_is_named_by_its_line(tmp_path, text: str, message: str):
    """Read with yaml.safe_load, the row "merged" ran co-attention (its second `overrides` won, silently) and seed
    010 was seed 8; recipes refused both."""
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_study(path)


def test_a_recipe_not_found_names_the_setting_and_the_closest_shipped_one(tmp_path):
    study = micro_study(tmp_path)
    study["base"]["tasks"]["vqa"]["recipe"] = "shapes-vqaa.yaml"
    with pytest.raises(ConfigError, match=r"base\.tasks\.vqa\.recipe: recipe 'shapes-vqaa.yaml' not found \(did you "
                                          r"mean 'shapes-vqa.yaml'\?\)"):  # fmt: skip
        plan_study(study_from_dict(study), tmp_path / "out", prepare=False)


def test_a_wrong_type_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"seeds\[1\] = 'two' must be an integer"):
        study_from_dict(micro_study(tmp_path, seeds=[1, "two"]))


def test_an_unknown_protocol_names_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError, match="protocol = 'pretrained'; choose one of: vlp, no-vlp"):
        study_from_dict(micro_study(tmp_path, protocol="pretrained"))


def test_a_search_needs_a_selection_split_for_every_task(tmp_path):
    with pytest.raises(ConfigError, match=r"base\.tasks\.vqa\.select is empty, but the study searches train\.lr"):
        study_from_dict(micro_study(tmp_path, search={"train.lr": [1e-4, 2e-4]}))


def test_a_stop_warning_that_leaves_no_time_or_exceeds_the_time_limit_is_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"slurm\.stop_s = 10 must be at least 30"):
        study_from_dict(micro_study(tmp_path, slurm={"stop_s": 10}))
    with pytest.raises(ConfigError, match=r"slurm\.stop_s = 600 .* under slurm\.time_min \(10 min\)"):
        study_from_dict(micro_study(tmp_path, slurm={"time_min": 10, "stop_s": 600}))
    with pytest.raises(ConfigError, match=r"slurm\.requeues = -1 must be at least 0"):
        study_from_dict(micro_study(tmp_path, slurm={"requeues": -1}))
    path = write_study(tmp_path / "study.yaml", micro_study(tmp_path))  # the command line's time limit is checked too
    out = str(tmp_path / "out")
    assert main(["study", "run", str(path), "--out", out, "--executor", "slurm", "--time-min", "1"]) == 2
    assert "slurm.stop_s = 120 must be at least 30" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_a_variant_without_a_name_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"variants\[0\]\.name is empty"):
        study_from_dict(micro_study(tmp_path, variants=[{"overrides": ["model.fusion=merged"]}]))


@pytest.mark.parametrize("name", ["pretrain", "pretrain-2", "status.json"])
def test_a_task_may_not_take_a_name_its_cell_keeps(tmp_path, name: str):
    """A task named `pretrain` shared the pretraining's folder: its cell counted as done, and it never trained."""
    study = micro_study(tmp_path)
    study["base"]["tasks"] = {name: study["base"]["tasks"]["vqa"]}
    with pytest.raises(ConfigError, match=rf"base.tasks.{name}: a cell's folder keeps '{name}' for its pretraining"):
        study_from_dict(study)


@pytest.mark.parametrize(("where", "setting", "message"), [
    ("variant", "train.max_steps=8", r"variant 'long' pretrain: train.max_steps is set by base.pretrain.steps"),
    ("search", "train.max_steps", r"search.train.max_steps: train.max_steps is set by base.tasks.vqa.steps"),
    ("search", "train.seed", r"search.train.seed: train.seed is set by the study \(seeds\)"),
    ("task", "train.init_from=/elsewhere", r"base.tasks.vqa.overrides: train.init_from is set by the study"),
])  # fmt: skip
def test_a_setting_the_study_sets_over_it_is_refused_where_it_is_given(tmp_path, where, setting, message):
    """The study's steps and seed came last: a variant of 8 pretraining steps shared the base's 2-step pretraining,
    and a search over train.max_steps or train.seed planned no points, each under its own name."""
    study = micro_study(tmp_path)
    if where == "variant":
        study["variants"] = [{"name": "long", "pretrain": [setting]}]
    elif where == "search":
        study["search"] = {setting: [1, 2]}
        study["base"]["tasks"]["vqa"]["select"] = {"holdout": 0.2}
    else:
        study["base"]["tasks"]["vqa"]["overrides"] = [setting]
    with pytest.raises(ConfigError, match=message):
        study_from_dict(study)


def test_a_variant_that_changes_nothing_is_an_error(tmp_path):
    """`variants: [merged]` (a name alone) was a row identical to the base, sharing its pretraining."""
    with pytest.raises(ConfigError, match=r"variants\[0\] \('merged'\) changes nothing from the base"):
        study_rows(study_from_dict(micro_study(tmp_path, variants=["merged"])))


def test_the_rows_are_the_base_then_each_variant(tmp_path):
    variants = [{"name": "merged", "overrides": ["model.fusion=merged"]},
                {"name": "RoBERTa", "overrides": ["model.text=roberta"]}]  # fmt: skip
    rows = study_rows(study_from_dict(micro_study(tmp_path, variants=variants)))
    assert [(r.name, r.slug) for r in rows] == [("co-attention", "co-attention"), ("merged", "merged"),
                                                ("RoBERTa", "roberta")]  # fmt: skip
    assert rows[0].changes == [] and rows[2].changes[0].overrides == ["model.text=roberta"]


def test_a_grid_is_every_combination_and_its_first_is_the_base(tmp_path):
    grid = {"text": {"BERT": {}, "RoBERTa": {"overrides": ["model.text=roberta"]}},
            "fusion": {"co": {}, "merged": {"overrides": ["model.fusion=merged"]}}}  # fmt: skip
    study = micro_study(tmp_path, grid=grid)
    del study["variants"]
    rows = study_rows(study_from_dict(study))
    assert [r.name for r in rows] == ["text=BERT, fusion=co", "text=BERT, fusion=merged", "text=RoBERTa, fusion=co",
                                      "text=RoBERTa, fusion=merged"]  # fmt: skip
    assert [o for c in rows[3].changes for o in c.overrides] == ["model.text=roberta", "model.fusion=merged"]


def test_variants_and_grid_together_are_an_error(tmp_path):
    with pytest.raises(ConfigError, match="variants and grid are both set"):
        study_from_dict(micro_study(tmp_path, grid={"text": {"BERT": {}}}))


def test_a_bad_override_in_a_variant_names_the_run_and_the_key(tmp_path):
    study = study_from_dict(micro_study(tmp_path, variants=[{"name": "typo", "overrides": ["model.fusoin=merged"]}]))
    with pytest.raises(ConfigError, match=r"vlp/typo/seed-0 pretraining: .*model\.fusoin is not a setting"):
        plan_study(study, tmp_path / "out", prepare=False)


@pytest.mark.parametrize("select", [["vqa.eval_split=val2014"], ["vqa.metric=official-2017"],
                                    ["vqa.eval_split=val2014", "vqa.min_answer_count=2"]])  # fmt: skip
def test_selecting_on_the_reported_split_is_refused(tmp_path, select):
    """The recipe's own split, alone or with another setting of the section beside (that let it through: the whole
    section was compared)."""
    study = micro_study(tmp_path, search={"train.lr": [2e-4]})
    study["base"]["tasks"]["vqa"]["select"] = {"overrides": select}
    with pytest.raises(ConfigError, match="its selection evaluates the same vqa split the table reports"):
        plan_study(study_from_dict(study), tmp_path / "out", prepare=False)


def test_selecting_on_a_split_of_the_same_name_in_another_file_is_allowed(tmp_path):
    """A selection file of its own (another Karpathy file whose `test` images are not the reported ones) is another
    split; the same file and split with another setting beside is not."""
    study = micro_study(tmp_path, variants=[], search={"train.lr": [2e-4]})
    own_file = {"overrides": ["retrieval.karpathy=karpathy/selection.json"]}
    study["base"]["tasks"] = {"f30k": {"recipe": "shapes-retrieval.yaml", "steps": 2, "select": own_file}}
    plan_study(study_from_dict(study), tmp_path / "out", prepare=False)
    study["base"]["tasks"]["f30k"]["select"] = {"overrides": ["retrieval.max_eval_images=5"]}
    with pytest.raises(ConfigError, match="its selection evaluates the same retrieval split the table reports"):
        plan_study(study_from_dict(study), tmp_path / "out", prepare=False)


def test_a_held_out_split_is_for_vqa_only(shapes_tasks_world, tmp_path):
    study = micro_study(shapes_tasks_world, search={"train.lr": [2e-4]})
    study["base"]["tasks"] = {"snli_ve": {"recipe": "shapes-snli-ve.yaml", "steps": 2, "select": {"holdout": 0.2}}}
    with pytest.raises(ConfigError, match=r"base\.tasks\.snli_ve\.select\.holdout is for VQA.*snli_ve\.eval_split"):
        plan_study(study_from_dict(study), tmp_path / "out", prepare=False)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_study_is_valid_and_every_recipe_it_names_exists(name, tmp_path):
    spec = load_study(name)  # a shipped study by its name
    plan = plan_study(spec, tmp_path / "out", prepare=False)  # resolves and validates every run's config
    assert plan.cells and all(Path(run.recipe).is_file() for cell in plan.cells for run in cell.runs)
    assert {run.task_kind for cell in plan.cells for run in cell.runs if run.kind == "finetune"} <= {
        "vqa", "nlvr2", "snli_ve", "retrieval", "captioning"}  # fmt: skip
    if name.startswith("shapes-"):
        assert spec.data.shapes, "a shapes-world study makes its own world"
    else:
        assert f"shapes-{name}" in SHIPPED, "each full-size study has a shapes-world version"


def test_check_lists_every_cell_and_run_and_writes_nothing(tmp_path, capsys):
    path = write_study(tmp_path / "study.yaml", micro_study(tmp_path, seeds=[0, 1]))
    assert main(["study", "check", str(path), "--out", str(tmp_path / "out")]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[1] == "2 rows x 2 seeds x 1 protocols = 4 cells, 8 runs; columns: vqa overall"
    assert shown[2] == "Reported on: vqa val2014."
    assert shown[3:] == [f"  vlp/{row}/seed-{seed}: pretrain, vqa" for row in ("co-attention", "merged")
                         for seed in (0, 1)]  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_a_search_value_that_is_not_a_list_is_named(tmp_path):
    study = micro_study(tmp_path, search={"train.lr": 5.0e-5})  # was an internal error: 'float' is not iterable
    with pytest.raises(ConfigError, match=r"search\.train\.lr = 5e-05 must be a list"):
        study_from_dict(study)


def _runs(name: str, out: Path) -> list[tuple[str, object]]:
    """(row, resolved config) of every run of a shipped study."""
    plan = plan_study(load_study(name), out, prepare=False)
    return [(cell.name.split("/")[1], run.config()) for cell in plan.cells for run in cell.runs]


@pytest.mark.parametrize("name", [n for n in SHIPPED if not n.startswith("shapes-")])
def test_the_paper_studies_answer_vqa_with_the_official_vocabulary(name, tmp_path):
    vqa = [cfg for _, cfg in _runs(name, tmp_path / "out") if cfg.task == "vqa"]
    assert vqa and all(cfg.vqa.answer_splits == ["train2014", "val2014"] for cfg in vqa)  # 3,129 answers, as write_vqa


# the official datasets' training examples: VQAv2 questions, Flickr30k captions (5 for each image of Karpathy's split)
OFFICIAL_EXAMPLES = {"train2014": 443_757, "val2014": 214_354, "train": 29_000 * 5, "val": 1_014 * 5}


@pytest.mark.parametrize("name", [n for n in SHIPPED if not n.startswith("shapes-")])
def test_the_paper_studies_fine_tune_vqa_and_flickr_for_ten_epochs_of_the_splits_they_train_on(name, tmp_path):
    """The official max_epoch=10: a study that trains on fewer splits than its recipe takes fewer steps."""
    study = load_study(name)
    processes = study.slurm.gpus_per_node * study.slurm.nodes
    checked = 0
    for cell in plan_study(study, tmp_path / "out", prepare=False).cells:
        for run in cell.runs:
            cfg = run.config()
            if run.kind != "finetune" or cfg.task not in ("vqa", "retrieval"):
                continue
            examples = 0.0
            for split in getattr(cfg, cfg.task).train_splits:
                official, _, part = split.partition("-")  # train2014-fit: train2014 less the images held out
                held_out = study.base.tasks[run.task].select.holdout if part == "fit" else 0.0
                examples += OFFICIAL_EXAMPLES[official] * (1 - held_out)
            split_global_batch(cfg.train, processes)
            per_epoch = math.ceil(examples / (cfg.train.batch_size * cfg.train.grad_accum * processes))
            assert cfg.train.max_steps == 10 * per_epoch, (cell.name, run.name, cfg.train.max_steps, per_epoch)
            checked += 1
    assert checked


def test_the_vlp_encoder_table_pretrains_at_the_resolution_its_rows_are_named_with(tmp_path):
    runs = _runs("encoders-vlp.yaml", tmp_path / "out")
    assert {row.split("-")[0] for row, _ in runs} == {"roberta", "bert", "embedding"}, "Table 4's Embed-only row"
    for row, cfg in runs:
        swin = cfg.model.vision.name == "swin"
        if cfg.task == "pretrain":  # CLIP-ViT-224/16 (the official 224 checkpoint), Swin-B-384/32
            assert cfg.model.vision.image_size == (384 if swin else 224), row
        if swin:  # the official Swin METER: image stream mean-pooled, drop path 0.1 in every run
            assert cfg.model.image_pool == "mean" and cfg.model.vision.drop_path == 0.1, (row, cfg.task)


def test_the_vision_encoder_table_runs_each_encoder_at_the_resolution_the_paper_names(tmp_path):
    sizes = {cfg.model.vision.name: cfg.model.vision.image_size for _, cfg in _runs("vision-encoders.yaml", tmp_path)}
    assert sizes == {"clip-vit": 224, "clip-vit-b32": 224, "beit": 224, "volo": 224, "vit": 384, "deit": 384,
                     "cait": 384, "swin": 384}  # fmt: skip


@pytest.mark.parametrize(("task", "study_fields", "message"), [
    ({"steps": 5}, {}, r"base\.tasks\.zs\.zero_shot trains nothing: it takes no steps and no select"),
    ({}, {"protocol": "no-vlp"}, r"base\.tasks\.zs\.zero_shot evaluates each cell's pretraining: it needs protocol"),
    ({"recipe": "shapes-vqa.yaml"}, {}, r"base\.tasks\.zs\.zero_shot: a vqa recipe; only retrieval is scored"),
])  # fmt: skip
def test_a_zero_shot_task_is_retrieval_from_a_pretraining_that_trains_nothing(task, study_fields, message, tmp_path):
    study = micro_study(tmp_path, **study_fields)
    study["base"]["tasks"]["zs"] = {"recipe": "shapes-retrieval.yaml", "zero_shot": True, **task}
    with pytest.raises(ConfigError, match=message):
        plan_study(study_from_dict(study), tmp_path / "out", prepare=False)


@pytest.mark.parametrize("name", ["architecture.yaml", "encoders-vlp.yaml", "fusion.yaml", "objectives.yaml"])
def test_the_vlp_studies_report_zero_shot_flickr_retrieval_from_each_pretraining(name, tmp_path):
    plan = plan_study(load_study(name), tmp_path / "out", prepare=False)
    for cell in plan.cells:
        pretraining = next(run for run in cell.runs if run.kind == "pretrain")
        zero_shot = [run for run in cell.runs if run.kind == "evaluate"]
        if pretraining.config().objectives.itm == 0:  # Table 7's MLM row: no ITM head to rank pairs with
            assert not zero_shot, cell.name
            continue
        assert [run.task_kind for run in zero_shot] == ["retrieval"], cell.name
        evaluated = zero_shot[0].config().train.init_from
        assert evaluated.startswith(f"{pretraining.folder}/checkpoints/step_"), "the pretraining, not fine-tuned"
    if name == "objectives.yaml":
        assert [cell.row for cell in plan.cells if not any(run.kind == "evaluate" for run in cell.runs)] == ["MLM"]
        # its dash says why, not left to read as a failed run
        assert not_run(plan) == ["f30k-zs: not run for MLM (– in its columns): pretrained without ITM, the model has "
                                 "no head that scores a pair without fine-tuning"]  # fmt: skip
    else:
        assert not_run(plan) == []
