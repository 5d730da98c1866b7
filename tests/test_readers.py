"""Each data-set format read from a tiny fixture laid out like the real release, and every bad input."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from paddle_medvl.config import DataConfig
from paddle_medvl.data import DataError, load_records
from paddle_medvl.data.medvqa import split_images
from paddle_medvl.data.r2gen import clean_report

P23 = "ImageCLEFmedical_Caption_2023_"


def image(path: Path, ext: str = "jpg") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- ImageCLEF 2023 / ROCOv2


def caption2023(root: Path, captions: str, concepts: str | None = None, ids=("A_1", "A_2")) -> Path:
    write(root / f"{P23}caption_prediction_valid_labels.csv", captions)
    if concepts is not None:
        write(root / f"{P23}concept_detection_valid_labels.csv", concepts)
    write(root / f"{P23}cui_mapping.csv", "C0040405\tX-Ray Computed Tomography\nC0817096\tChest\n")
    for i in ids:
        image(root / "valid" / f"{i}.jpg")
    return root


def caption_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(format="imageclef_caption", root=str(root), **kw)


def test_caption2023_with_concept_sentences(tmp_path, capsys):
    root = caption2023(
        tmp_path,
        'ID\tcaption\nA_1\tCT of the "chest", axial view.\nA_2\tT2-weighted MRI\n',
        "ID\tcuis\nA_1\tC0040405;C0817096\nA_2\tC0817096;C9999999\n",
    )
    records = load_records(caption_cfg(root, prompt="a photo of"), "valid")
    assert [r.id for r in records] == ["A_1", "A_2"]
    a, b = records
    assert a.target == 'CT of the "chest", axial view.'  # bare quotes are data, not CSV quoting
    assert a.prompt == "a photo of"
    assert a.images == [str((root / "valid" / "A_1.jpg").resolve())] or Path(a.images[0]).samefile(root / "valid" / "A_1.jpg")
    assert a.extras["cuis"] == ["C0040405", "C0817096"]
    assert a.extras["concept_sentence"] == "The image shows X-Ray Computed Tomography, Chest."
    assert b.extras["concept_sentence"] == "The image shows Chest."  # unknown CUI left out ...
    assert "1 CUIs (1 uses)" in capsys.readouterr().out  # ... and counted
    # the concept head's classes: line numbers in the mapping file (unknown CUIs have none)
    assert (a.extras["concept_ids"], b.extras["concept_ids"], a.extras["concept_classes"]) == ([0, 1], [1], 2)


def test_caption2023_without_concepts_is_the_test_split_layout(tmp_path):
    root = caption2023(tmp_path, "ID\tcaption\nA_1\tx\n", ids=("A_1",))
    (record,) = load_records(caption_cfg(root), "valid")
    assert record.extras == {"cuis": [], "concept_sentence": "", "concept_ids": [], "concept_classes": 2}


def test_rocov2(tmp_path):
    write(tmp_path / "train_captions.csv", 'ID,Caption\nR_1,"Head CT, showing a mass."\nR_2,Chest X-ray\n')
    write(tmp_path / "train_concepts.csv", "ID,CUIs\nR_1,C1;C2\nR_2,C2\n")
    write(tmp_path / "cui_mapping.csv", "CUI,Canonical name\nC1,Head\nC2,Mass\n")
    for i in ("R_1", "R_2"):
        image(tmp_path / "train" / f"{i}.jpg")
    records = load_records(DataConfig(format="rocov2", root=str(tmp_path)), "train")
    assert records[0].target == "Head CT, showing a mass."
    assert records[0].extras["concept_sentence"] == "The image shows Head, Mass."
    assert records[1].extras["concept_sentence"] == "The image shows Mass."
    assert [r.extras["concept_ids"] for r in records] == [[0, 1], [1]]


# ---------------------------------------------------------------- MEDVQA-GI 2023


def medvqa(root: Path, n_images: int = 20) -> Path:
    entries = []
    for i in range(n_images):
        image_id = f"cl8k2u1r{i:03d}"
        image(root / "images" / f"{image_id}.jpg")
        entries.append({
            "ImageID": image_id,
            "Labels": [
                {"Question": "Where in the image is the abnormality?", "AnswerType": "Text", "Answer": ["Lower-rigth", "Center"]},
                {"Question": "Is there a green/black box artefact?", "AnswerType": "Yes/No", "Answer": ["No"]},
                {"Question": "How many instrumnets are in the image?", "AnswerType": "Number", "Answer": ["0"]},
                {"Question": "Where in the image is the polyp?", "AnswerType": "segmentation", "Answer": [[1, 2, 3]]},
            ],
        })
    write(root / "gt.json", json.dumps(entries, indent=1))
    return root


def test_medvqa_records_typos_and_segmentation(tmp_path, capsys):
    root = medvqa(tmp_path, 2)
    records = load_records(DataConfig(format="medvqa_gi", root=str(root)), "all")
    assert len(records) == 6  # 2 images x 3 text questions; segmentation skipped ...
    assert "skipped 2 segmentation labels" in capsys.readouterr().out  # ... and counted
    first = records[0]
    assert first.id == "cl8k2u1r000#0" and first.prompt == "Where in the image is the abnormality?"
    assert first.target == "Center; Lower-rigth"  # sorted, official typo kept
    assert first.extras["answers"] == ["Lower-rigth", "Center"]
    assert records[2].prompt == "How many instrumnets are in the image?"
    tmpl = load_records(DataConfig(format="medvqa_gi", root=str(root), prompt="Question: {question} Answer:"), "all")
    assert tmpl[1].prompt == "Question: Is there a green/black box artefact? Answer:"


def test_medvqa_split_is_image_level_and_deterministic(tmp_path):
    root = medvqa(tmp_path, 40)
    cfg = DataConfig(format="medvqa_gi", root=str(root), val_fraction=0.1, split_seed=7)
    train, valid = load_records(cfg, "train"), load_records(cfg, "valid")
    train_images = {r.extras["image_id"] for r in train}
    valid_images = {r.extras["image_id"] for r in valid}
    assert len(valid_images) == 4 and len(train_images) == 36 and not train_images & valid_images
    assert [r.id for r in load_records(cfg, "valid")] == [r.id for r in valid]
    # independent of the order of gt.json, and the seed matters
    ids = sorted(train_images | valid_images)
    assert split_images(ids[::-1], 0.1, 7) == valid_images
    assert split_images(ids, 0.1, 8) != valid_images


# ---------------------------------------------------------------- IU X-RAY / MIMIC-CXR


def iu(root: Path) -> Path:
    ann = {"train": [
        {"id": "CXR2384_IM-0942", "report": "The heart is normal in size. 2. No effusion..", "image_path": ["CXR2384_IM-0942/0.png", "CXR2384_IM-0942/1.png"], "split": "train"},
        {"id": "CXR7_IM-0001", "report": "Lungs are clear.", "image_path": ["CXR7_IM-0001/0.png", "CXR7_IM-0001/1.png"], "split": "train"},
    ], "val": [], "test": []}
    write(root / "annotation.json", json.dumps(ann))
    for entry in ann["train"]:
        for p in entry["image_path"]:
            image(root / "images" / p)
    write(root / "indiana_reports.csv",
          "uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
          '2384,normal,Cardiomegaly;Opacity,"Chest, 2 views, frontal and lateral",Pruritic,None.,"Heart, big.",Clear.\n')
    return root


def test_iu_xray_two_views_prior_and_cleaning(tmp_path, capsys):
    root = iu(tmp_path)
    records = load_records(DataConfig(format="iu_xray", root=str(root), reports_csv="indiana_reports.csv"), "train")
    a, b = records
    assert len(a.images) == 2 and a.images[1].endswith("CXR2384_IM-0942/1.png")
    assert a.prompt == "Problems: Cardiomegaly, Opacity \n Image: Chest, 2 views, frontal and lateral \n Indication: Pruritic \n"
    assert a.target == "the heart is normal in size . no effusion ."
    assert b.prompt == ""  # no row for uid 7: empty prior, counted
    assert "1 train studies have no row" in capsys.readouterr().out
    raw = load_records(DataConfig(format="iu_xray", root=str(root), clean_reports=False), "train")
    assert raw[0].target == "The heart is normal in size. 2. No effusion.." and raw[0].prompt == ""


def test_iu_xray_mesh_terms_are_concepts(tmp_path):
    """The MeSH column gives each study's concepts, numbered over the whole file in sorted order ("normal"
    is none); a study without a row has none; without the MeSH column there are no concepts."""
    root = iu(tmp_path)
    write(root / "indiana_reports.csv",
          "uid,MeSH,Problems,image,indication,comparison,findings,impression\n"
          '2384,Pleural Effusion/left/small;Cardiomegaly,Cardiomegaly,x,y,None.,f,i\n'
          '9,Nodule/lung/upper/right;Cardiomegaly,Nodule,x,y,None.,f,i\n'
          '10,normal,normal,x,y,None.,f,i\n')
    a, b = load_records(DataConfig(format="iu_xray", root=str(root), reports_csv="indiana_reports.csv"), "train")
    # sorted: Cardiomegaly 0, Nodule/lung/upper/right 1, Pleural Effusion/left/small 2
    assert a.extras["concept_ids"] == [2, 0] and a.extras["concept_classes"] == 3
    assert b.extras["concept_ids"] == [] and b.extras["concept_classes"] == 3  # uid 7 has no row
    write(root / "indiana_reports.csv", "uid,Problems,image,indication\n2384,Nodule,x,y\n")
    a, _ = load_records(DataConfig(format="iu_xray", root=str(root), reports_csv="indiana_reports.csv"), "train")
    assert "concept_ids" not in a.extras and a.prompt.startswith("Problems: Nodule")


def test_r2gen_cleaning_matches_r2gen():
    assert clean_report("1. The heart is normal. 2. No pleural effusion (left)...", "iu_xray") == \
        "the heart is normal . no pleural effusion left ."
    assert clean_report("FINDINGS:\n\nHeart size is normal.  No  acute  process__ seen.", "mimic_cxr") == \
        "findings heart size is normal . no acute process seen ."
    assert clean_report("a <b> = c @ d", "iu_xray") == "a b  c  d ."  # R2Gen's ":-[" range removes < = > @


def mimic(root: Path, labels: str, encoding_rows=None) -> Path:
    ann = {"test": [
        {"id": "d1", "study_id": 50414267, "subject_id": 10000032, "report": "No acute process.",
         "image_path": ["p10/p10000032/s50414267/d1.jpg"], "split": "test"},
    ]}
    write(root / "annotation.json", json.dumps(ann))
    image(root / "images" / "p10/p10000032/s50414267/d1.jpg")
    write(root / "labels.csv", labels)
    return root


HEADER = "study_id,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices,No Finding\n"


def test_mimic_prior_from_chexbert_labels(tmp_path):
    root = mimic(tmp_path, HEADER + "50414267,0,1,0,0,2,2,0,1,3,0,0,0,0,0\n")
    (record,) = load_records(DataConfig(format="mimic_cxr", root=str(root), labels_csv="labels.csv", val_split="test"), "test")
    assert record.prompt == "Symptoms of existence: Cardiomegaly, Atelectasis \n Symptoms of non-existence: Edema, Consolidation \n"
    root2 = mimic(tmp_path / "b", HEADER + "50414267.0,,1.0,,,0.0,0.0,,1.0,-1.0,,,,,\n")
    cfg = DataConfig(format="mimic_cxr", root=str(root2), labels_csv="labels.csv", labels_encoding="chexbert_csv")
    assert load_records(cfg, "test")[0].prompt == record.prompt
    with pytest.raises(DataError, match=r"labels\.csv:2: Edema = '0\.0' is not a class_index label value|labels\.csv:2: .* is not a class_index"):
        load_records(DataConfig(format="mimic_cxr", root=str(root2), labels_csv="labels.csv"), "test")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "captions, message, kind, kept",
    [
        ("ID\tcaption\nA_1\tok\nA_1\tagain\n", r"valid_labels\.csv:3: duplicate ID 'A_1' \(first on line 2\)", "duplicate ID", "A_1"),
        ("ID\tcaption\nA_1\tok\textra\nA_2\tok\n", r"valid_labels\.csv:2: expected 2 fields, found 3", "malformed row", "A_2"),
        ("ID\tcaption\nA_9\tok\nA_2\tok\n", r"valid_labels\.csv:2: ID 'A_9': no image for this ID", "missing image", "A_2"),
        ("ID\tcaption\n../../etc/A_1\tok\nA_2\tok\n", r"valid_labels\.csv:2: ID '\.\./\.\./etc/A_1': the ID is not a plain file name", "path outside the data root", "A_2"),
        ("ID\tcaption\n/etc/A_1\tok\nA_2\tok\n", r"valid_labels\.csv:2: ID '/etc/A_1'", "path outside the data root", "A_2"),
    ],
)
def test_bad_caption_rows_raise_or_skip(tmp_path, capsys, captions, message, kind, kept):
    root = caption2023(tmp_path, captions)
    with pytest.raises(DataError, match=message):
        load_records(caption_cfg(root), "valid")
    records = load_records(caption_cfg(root, on_error="skip"), "valid")
    assert [r.id for r in records] == [kept]
    out = capsys.readouterr().out
    assert f"skipped 1 bad records: 1 x {kind}" in out


def test_wrong_header_is_an_error_naming_the_line(tmp_path):
    root = caption2023(tmp_path, "id,caption\nA_1\tok\n")
    with pytest.raises(DataError, match=r"valid_labels\.csv:1: expected the header 'ID\\tcaption'"):
        load_records(caption_cfg(root, on_error="skip"), "valid")


def test_malformed_json_names_line_and_column(tmp_path):
    write(tmp_path / "gt.json", '[{"ImageID": "x",\n  "Labels": [}]')
    with pytest.raises(DataError, match=r"gt\.json:2:14: malformed JSON"):
        load_records(DataConfig(format="medvqa_gi", root=str(tmp_path)), "all")
    write(tmp_path / "annotation.json", "{")
    with pytest.raises(DataError, match=r"annotation\.json:1:2: malformed JSON"):
        load_records(DataConfig(format="iu_xray", root=str(tmp_path)), "train")


def test_r2gen_path_escaping_the_root(tmp_path):
    root = iu(tmp_path)
    ann = json.loads((root / "annotation.json").read_text())
    ann["train"][0]["image_path"] = ["../../../etc/passwd"]
    ann["train"][1]["image_path"] = ["/etc/passwd"]
    write(root / "annotation.json", json.dumps(ann))
    with pytest.raises(DataError, match=r"annotation\.json: train id 'CXR2384_IM-0942': image path '\.\./\.\./\.\./etc/passwd' escapes"):
        load_records(DataConfig(format="iu_xray", root=str(root)), "train")
    with pytest.raises(DataError, match=r"no usable 'train' records"):
        load_records(DataConfig(format="iu_xray", root=str(root), on_error="skip"), "train")


def test_medvqa_bad_entries_are_named(tmp_path, capsys):
    root = medvqa(tmp_path, 3)
    entries = json.loads((root / "gt.json").read_text())
    entries[1]["Labels"][0]["Answer"] = []
    entries.append(dict(entries[0]))
    entries.append({"ImageID": "nope", "Labels": []})
    write(root / "gt.json", json.dumps(entries))
    with pytest.raises(DataError, match=r"ImageID 'cl8k2u1r001', label 0: empty answer"):
        load_records(DataConfig(format="medvqa_gi", root=str(root)), "all")
    records = load_records(DataConfig(format="medvqa_gi", root=str(root), on_error="skip"), "all")
    assert len(records) == 8
    out = capsys.readouterr().out
    assert "skipped 3 bad records" in out and "duplicate ID" in out and "missing image" in out


def test_config_errors(tmp_path):
    with pytest.raises(DataError, match="Data.format 'coco' is not a known format"):
        load_records(DataConfig(format="coco", root=str(tmp_path)), "train")
    with pytest.raises(DataError, match="Data.root '.*nowhere' is not a folder"):
        load_records(DataConfig(format="rocov2", root=str(tmp_path / "nowhere")), "train")
    root = medvqa(tmp_path, 1)
    with pytest.raises(DataError, match=r"uses \{prior\}, which this data set does not provide"):
        load_records(DataConfig(format="medvqa_gi", root=str(root), prompt="{prior}"), "all")
    with pytest.raises(DataError, match="MEDVQA-GI has the splits train, valid, all"):
        load_records(DataConfig(format="medvqa_gi", root=str(root)), "test")
    with pytest.raises(DataError, match="no split 'valid' \\(found: test, train, val\\)"):
        write(tmp_path / "r" / "annotation.json", '{"train": [], "val": [], "test": []}')
        load_records(DataConfig(format="iu_xray", root=str(tmp_path / "r")), "valid")
    with pytest.raises(DataError, match="Data.on_error must be 'raise' or 'skip'"):
        load_records(DataConfig(format="medvqa_gi", root=str(root), on_error="ignore"), "all")


# ---------------------------------------------------------------- duplicates in the concept and mapping files


def rocov2(root: Path, concepts: str, mapping: str, ids=("R_1", "R_2")) -> Path:
    write(root / "valid_captions.csv", "ID,Caption\n" + "".join(f"{i},caption {i}\n" for i in ids))
    write(root / "valid_concepts.csv", concepts)
    write(root / "cui_mapping.csv", mapping)
    for i in ids:
        image(root / "valid" / f"{i}.jpg")
    return root


DUPLICATES = {  # case -> (format, files, error message, kind)
    "2023 concept ID": (
        "imageclef_caption",
        {f"{P23}concept_detection_valid_labels.csv": "ID\tcuis\nA_1\tC0040405\nA_2\tC0817096\nA_1\tC0817096\n"},
        rf"{P23}concept_detection_valid_labels\.csv:4: duplicate ID 'A_1' \(first on line 2\)", "duplicate ID",
    ),
    "2023 mapping CUI": (
        "imageclef_caption",
        {f"{P23}concept_detection_valid_labels.csv": "ID\tcuis\nA_1\tC0040405\nA_2\tC0817096\n",
         f"{P23}cui_mapping.csv": "C0040405\tX-Ray Computed Tomography\nC0817096\tChest\nC0040405\tCT\n"},
        rf"{P23}cui_mapping\.csv:3: duplicate CUI 'C0040405' \(first on line 1\)", "duplicate CUI",
    ),
    "ROCOv2 concept ID": (
        "rocov2",
        {"valid_concepts.csv": "ID,CUIs\nR_1,C1\nR_1,C2\nR_2,C2\n",
         "cui_mapping.csv": "CUI,Canonical name\nC1,X-Ray Computed Tomography\nC2,Chest\n"},
        r"valid_concepts\.csv:3: duplicate ID 'R_1' \(first on line 2\)", "duplicate ID",
    ),
    "ROCOv2 mapping CUI": (
        "rocov2",
        {"valid_concepts.csv": "ID,CUIs\nR_1,C1\nR_2,C2\n",
         "cui_mapping.csv": "CUI,Canonical name\nC1,X-Ray Computed Tomography\nC2,Chest\nC1,CT\n"},
        r"cui_mapping\.csv:4: duplicate CUI 'C1' \(first on line 2\)", "duplicate CUI",
    ),
}


@pytest.mark.parametrize("case", DUPLICATES)
def test_a_repeated_concept_id_or_cui_names_both_lines(tmp_path, capsys, case):
    fmt, files, message, kind = DUPLICATES[case]
    if fmt == "imageclef_caption":
        root = caption2023(tmp_path, "ID\tcaption\nA_1\tone\nA_2\ttwo\n")
    else:
        root = rocov2(tmp_path, "ID,CUIs\n", "CUI,Canonical name\n")
    for name, text in files.items():
        write(root / name, text)
    cfg = DataConfig(format=fmt, root=str(root))
    with pytest.raises(DataError, match=message):  # the later row no longer wins silently
        load_records(cfg, "valid")
    cfg.on_error = "skip"
    first, second = load_records(cfg, "valid")
    assert f"skipped 1 bad records: 1 x {kind}" in capsys.readouterr().out
    # skipped, the first row counts: the first concept row, the first name, two classes
    assert first.extras["concept_sentence"] == "The image shows X-Ray Computed Tomography."
    assert second.extras["concept_sentence"] == "The image shows Chest."
    assert first.extras["concept_classes"] == 2 and second.extras["concept_ids"] == [1]


# ---------------------------------------------------------------- symlinked images


def outside_image(tmp_path: Path) -> Path:
    """An image outside every data root of these tests."""
    path = tmp_path / "elsewhere" / "secret.jpg"
    image(path)
    return path


def link(path: Path, target: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)


def symlink_case(fmt: str, root: Path) -> tuple[DataConfig, str, Path, Path]:
    """A small data set of ``fmt`` under ``root``: (config, split, an image that may be replaced
    by a link, a second image), and the ID that the first image belongs to is in the error."""
    if fmt == "imageclef_caption":
        caption2023(root, "ID\tcaption\nA_1\tone\nA_2\ttwo\n")
        return DataConfig(format=fmt, root=str(root)), "valid", root / "valid" / "A_1.jpg", root / "valid" / "A_2.jpg"
    if fmt == "rocov2":
        rocov2(root, "ID,CUIs\nR_1,C1\nR_2,C1\n", "CUI,Canonical name\nC1,Chest\n")
        return DataConfig(format=fmt, root=str(root)), "valid", root / "valid" / "R_1.jpg", root / "valid" / "R_2.jpg"
    if fmt == "medvqa_gi":
        medvqa(root, 2)
        return DataConfig(format=fmt, root=str(root)), "all", *(root / "images" / f"cl8k2u1r00{i}.jpg" for i in (0, 1))
    if fmt == "iu_xray":
        iu(root)
        return (DataConfig(format=fmt, root=str(root)), "train", root / "images" / "CXR2384_IM-0942" / "1.png",
                root / "images" / "CXR7_IM-0001" / "0.png")
    mimic(root, HEADER)
    ann = json.loads((root / "annotation.json").read_text())
    second = dict(ann["test"][0], id="d2", image_path=["p10/p10000032/s50414267/d2.jpg"])
    ann["test"].append(second)
    write(root / "annotation.json", json.dumps(ann))
    image(root / "images" / second["image_path"][0])
    return (DataConfig(format=fmt, root=str(root), val_split="test"), "test", root / "images" / "p10/p10000032/s50414267/d1.jpg",
            root / "images" / second["image_path"][0])


SYMLINK_IDS = {"imageclef_caption": "'A_1'", "rocov2": "'R_1'", "medvqa_gi": "'cl8k2u1r000'",
               "iu_xray": "'CXR2384_IM-0942'", "mimic_cxr": "'d1'"}


@pytest.mark.parametrize("fmt", SYMLINK_IDS)
def test_an_image_linked_to_outside_the_root_is_refused(tmp_path, capsys, fmt):
    cfg, split, linked, _ = symlink_case(fmt, tmp_path / "root")
    link(linked, outside_image(tmp_path))
    with pytest.raises(DataError, match=rf"{SYMLINK_IDS[fmt]}.*{linked.name} leads through a symlink to .*secret\.jpg, "
                                        r"outside the data root"):
        load_records(cfg, split)
    cfg.on_error = "skip"
    records = load_records(cfg, split)
    assert records and all("secret" not in p for r in records for p in r.images)
    assert "1 x path outside the data root" in capsys.readouterr().out
    # the same through a linked folder on the way
    folder = linked.parent
    moved = tmp_path / "elsewhere" / "folder"
    folder.rename(moved)
    link(folder, moved)
    (moved / linked.name).unlink()
    image(moved / linked.name)
    cfg.on_error = "raise"
    if folder.parent == tmp_path / "root":  # the image folder itself: the user's choice, allowed
        assert load_records(cfg, split)
    else:  # a folder inside the image folder, from the data set: refused
        with pytest.raises(DataError, match="leads through a symlink"):
            load_records(cfg, split)


@pytest.mark.parametrize("fmt", SYMLINK_IDS)
def test_links_that_stay_inside_the_root_are_fine(tmp_path, fmt):
    root = tmp_path / "root"
    cfg, split, linked, other = symlink_case(fmt, root)
    keep = root / "originals" / linked.name  # e.g. one copy shared by two splits
    keep.parent.mkdir()
    linked.rename(keep)
    link(linked, Path("..") / Path(*[".."] * (len(linked.relative_to(root).parts) - 2)) / "originals" / linked.name)
    assert linked.is_symlink() and linked.is_file()
    records = load_records(cfg, split)
    assert str(keep.resolve()) in {p for r in records for p in r.images}
    # a data root that is itself a link (or reached through one) changes nothing
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    cfg.root = str(alias)
    assert len(load_records(cfg, split)) == len(records)


# ---------------------------------------------------------------- empty files

EMPTY_FILES = [  # (format, split, the file, Data settings)
    ("imageclef_caption", "valid", f"{P23}caption_prediction_valid_labels.csv", {}),
    ("imageclef_caption", "valid", f"{P23}concept_detection_valid_labels.csv", {}),
    ("imageclef_caption", "valid", f"{P23}cui_mapping.csv", {}),
    ("rocov2", "valid", "valid_captions.csv", {}),
    ("rocov2", "valid", "valid_concepts.csv", {}),
    ("rocov2", "valid", "cui_mapping.csv", {}),
    ("medvqa_gi", "all", "gt.json", {}),
    ("iu_xray", "train", "annotation.json", {}),
    ("iu_xray", "train", "indiana_reports.csv", {"reports_csv": "indiana_reports.csv"}),
    ("mimic_cxr", "test", "annotation.json", {"val_split": "test"}),
    ("mimic_cxr", "test", "labels.csv", {"labels_csv": "labels.csv", "val_split": "test"}),
]


@pytest.mark.parametrize("fmt, split, name, settings", EMPTY_FILES, ids=[f"{f}-{n}" for f, _, n, _ in EMPTY_FILES])
@pytest.mark.parametrize("content", [b"", b"\r\n \n"], ids=["0 bytes", "blank lines"])
def test_an_empty_input_file_is_named(tmp_path, fmt, split, name, settings, content):
    cfg, split, _, _ = symlink_case(fmt, tmp_path)
    if fmt == "imageclef_caption":
        write(tmp_path / f"{P23}concept_detection_valid_labels.csv", "ID\tcuis\nA_1\tC0817096\n")
    for key, value in settings.items():
        setattr(cfg, key, value)
    assert load_records(cfg, split)
    (tmp_path / name).write_bytes(content)
    kind = "no JSON content" if name.endswith(".json") else "no header, no rows"
    for on_error in ("raise", "skip"):
        cfg.on_error = on_error
        with pytest.raises(DataError, match=rf"{re.escape(str(tmp_path / name))}: empty file \({kind}\)"):
            load_records(cfg, split)


# ---------------------------------------------------------------- the official 2023 files: CRLF, blank captions


def test_crlf_files_and_captions_of_only_spaces_load_by_default(tmp_path, capsys):
    """As released: the 2023 validation captions end lines with CRLF and one caption is a lone U+202F."""
    blanks = {"A_3": "\u202f", "A_4": "\u00a0 ", "A_5": "\u200b", "A_6": ""}
    rows = ["ID\tcaption", "A_1\tCT of the chest\u200b", "A_2\tT2-weighted MRI", *(f"{i}\t{c}" for i, c in blanks.items())]
    root = caption2023(tmp_path, "", ids=("A_1", "A_2", *blanks))
    (root / f"{P23}caption_prediction_valid_labels.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    (root / f"{P23}concept_detection_valid_labels.csv").write_bytes(
        b"ID\tcuis\r\nA_1\tC0040405;C0817096\r\nA_2\tC0817096\r\n")
    (root / f"{P23}cui_mapping.csv").write_bytes(b"C0040405\tX-Ray Computed Tomography\r\nC0817096\tChest\r\n")
    a, b = load_records(caption_cfg(root), "valid")  # on_error: raise, the default
    assert (a.id, a.target, b.id, b.target) == ("A_1", "CT of the chest", "A_2", "T2-weighted MRI")
    assert a.extras["cuis"] == ["C0040405", "C0817096"] and b.extras["cuis"] == ["C0817096"]
    assert a.extras["concept_sentence"] == "The image shows X-Ray Computed Tomography, Chest."
    assert a.extras["concept_ids"] == [0, 1] and a.extras["concept_classes"] == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # one warning, once loading ends
    assert "warning: imageclef_caption valid: left out 4 records without text: 4 x no caption text" in out
    assert "valid_labels.csv:4: ID 'A_3' has no caption text" in out
    # a row with the wrong number of fields stays an error, CRLF or not
    rows.append("A_7\ttoo\tmany")
    image(root / "valid" / "A_7.jpg")
    (root / f"{P23}caption_prediction_valid_labels.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    with pytest.raises(DataError, match=r"valid_labels\.csv:8: expected 2 fields, found 3"):
        load_records(caption_cfg(root), "valid")


def test_rocov2_crlf_and_a_blank_quoted_caption(tmp_path, capsys):
    root = rocov2(tmp_path, "ID,CUIs\r\nR_1,C1\r\nR_2,C1\r\n", "CUI,Canonical name\r\nC1,Chest\r\n")
    (root / "valid_captions.csv").write_bytes('ID,Caption\r\nR_1,"Head CT, axial"\r\nR_2,"\u202f"\r\n'.encode())
    (record,) = load_records(DataConfig(format="rocov2", root=str(root)), "valid")
    assert record.target == "Head CT, axial" and record.extras["concept_sentence"] == "The image shows Chest."
    assert "left out 1 records without text" in capsys.readouterr().out


# ---------------------------------------------------------------- the demo data through the readers


def test_every_synthetic_set_reads_with_its_reader(tmp_path):
    """The generator and the readers agree on every real format (two independent implementations)."""
    from paddle_medvl.data.synthetic import make_demo_data

    roots = make_demo_data(tmp_path, seed=3, n_caption=20, n_rocov2=20, n_vqa=10, n_iu=20, n_mimic=20, image_size=64)
    cases = [
        ("caption", DataConfig(format="imageclef_caption"), "train"),
        ("rocov2", DataConfig(format="rocov2"), "test"),
        ("vqa", DataConfig(format="medvqa_gi", val_fraction=0.2), "valid"),
        ("iu", DataConfig(format="iu_xray", reports_csv="indiana_reports.csv"), "val"),
        ("mimic", DataConfig(format="mimic_cxr", labels_csv="chexbert_labels.csv"), "train"),
    ]
    for task, cfg, split in cases:
        cfg.root = str(roots[task])
        cfg.on_error = "raise"  # any disagreement is an error, not a skip
        records = load_records(cfg, split)
        assert records, task
        for record in records:
            assert record.target and all(Path(p).is_file() for p in record.images)
        if task == "caption":
            assert all(r.extras["concept_sentence"].startswith("The image shows ") for r in records)
        if task == "vqa":
            assert len({r.extras["image_id"] for r in records}) == 2  # 20 % of 10 images
            assert {r.prompt for r in records} >= {"What color is the abnormality?", "Where in the image is the abnormality?"}
        if task == "iu":
            assert all(len(r.images) == 2 and r.prompt.startswith("Problems: ") for r in records)
        if task == "mimic":
            assert all(r.prompt.startswith("Symptoms of existence: ") for r in records)
