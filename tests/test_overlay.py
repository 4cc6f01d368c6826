"""Overlay pictures: a colour per class, a legend naming the classes, volumes in radiological view; the training
demo's overlay.png and `medsa-peft predict`'s overlay show a volume the same way."""

import datasets
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsa_peft.data import PromptSpec
from medsa_peft.evaluation.scoring import SHOWCASE_MIN_SIZE, evaluate_model
from medsa_peft.inference import Box3D, MedSAPredictor
from medsa_peft.overlay import SWATCH, class_colour, figure, legend, radiological
from test_scoring import FRAME, BoxOracle, volume_split

# stored with rows running to posterior and columns to the patient's left: canonical slices are the flipped transpose
SWAPPED_LPS = np.array([[0.0, -1.5, 0.0, 0.0], [-1.5, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def colour_pixels(picture: Image.Image | np.ndarray, colour) -> np.ndarray:
    """(row, column) of every pixel of exactly this RGB colour."""
    return np.argwhere((np.asarray(picture)[..., :3] == colour).all(axis=-1))


def test_class_colours_differ():
    colours = np.array([class_colour(index) for index in range(16)], dtype=float)
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=-1)
    assert distances[~np.eye(len(colours), dtype=bool)].min() > 30


def test_radiological_view_puts_anterior_up_and_the_patients_right_on_the_left():
    axial = np.zeros((5, 4))  # canonical (RAS+): x from the patient's left to right, y from posterior to anterior
    axial[4, 3] = 1.0  # right, anterior
    axial[0, 0] = 2.0  # left, posterior
    picture = radiological(axial)
    assert picture.shape == (4, 5)
    assert picture[0, 0] == 1.0 and picture[-1, -1] == 2.0
    assert radiological(np.stack([axial] * 3, axis=-1)).shape == (4, 5, 3)


def test_legend_names_each_class_after_a_square_of_its_colour_in_rows_that_fit():
    entries = [("liver", class_colour(0)), ("spleen", class_colour(1)), ("left kidney", class_colour(2))]
    wide, narrow = legend(entries, width=400), legend(entries, width=90)
    assert wide.width == 400 and narrow.width == 90
    assert narrow.height > wide.height  # one entry a row
    for strip in (wide, narrow):
        for _, colour in entries:
            assert len(colour_pixels(strip, colour)) == SWATCH * SWATCH


def test_figure_puts_captioned_panels_side_by_side_over_the_legend():
    panel = Image.fromarray(np.full((20, 30, 3), (10, 200, 90), np.uint8))
    entries = [("organ", class_colour(0))]
    picture = figure([("truth", panel), ("prediction", panel)], entries, min_size=100)
    strip = legend(entries, picture.width)
    assert picture.width > 2 * 120  # each panel enlarged 4x, to 120 x 80
    assert len(colour_pixels(picture, (10, 200, 90))) == 2 * 120 * 80
    np.testing.assert_array_equal(np.asarray(picture)[-strip.height :], np.asarray(strip))
    with pytest.raises(ValueError, match="one size"):
        figure([("a", panel), ("b", panel.resize((10, 10)))], entries)


def test_the_demo_overlay_colours_each_class_and_names_it_in_the_legend():
    label = np.zeros((32, 64, 10), np.uint8)
    label[4:14, 5:25, 3:8] = 1
    label[18:30, 30:60, 2:9] = 2
    image = np.random.default_rng(0).integers(-200, 300, label.shape).astype(np.int16)
    classes = {"liver": (1,), "spleen": (2,), "absent": (3,)}
    evaluation = evaluate_model(
        BoxOracle(), volume_split(image, label, SWAPPED_LPS), classes, "ct", FRAME, PromptSpec("box"), progress=False
    )
    picture = evaluation.overlay
    strip = legend([("liver", class_colour(0)), ("spleen", class_colour(1))], picture.width)  # classes shown only
    np.testing.assert_array_equal(np.asarray(picture)[-strip.height :], np.asarray(strip))
    panels = np.asarray(picture)[: -strip.height]
    for colour in (class_colour(0), class_colour(1)):
        columns = colour_pixels(panels, colour)[:, 1]
        assert (columns < picture.width // 2).any() and (columns > picture.width // 2).any()  # truth, prediction
    assert class_colour(0) != class_colour(1)


def test_the_demo_overlay_shows_a_volume_as_predict_shows_it(tmp_path):
    """The same volume, stored rotated: the demo's truth and prediction panels are predict's overlay of the same
    mask (a box the oracle paints), pixel for pixel."""
    label = np.zeros((32, 64, 10), np.uint8)
    label[4:14, 10:30, 3:8] = 1
    image = np.random.default_rng(1).integers(-200, 300, label.shape).astype(np.int16)
    nib.save(nib.Nifti1Image(image, SWAPPED_LPS), tmp_path / "ct.nii.gz")

    evaluation = evaluate_model(
        BoxOracle(), volume_split(image, label, SWAPPED_LPS), {"organ": (1,)}, "ct", FRAME, PromptSpec("box"),
        progress=False,
    )
    predictor = MedSAPredictor(BoxOracle(), frame=FRAME, depth_adapter=False, progress=False)
    prediction = predictor.predict_file(tmp_path / "ct.nii.gz", Box3D(10, 4, 3, 30, 14, 8), modality="ct")
    np.testing.assert_array_equal(prediction.mask, label == 1)
    shown = Image.fromarray(prediction.overlay())
    assert shown.size == (64, 32)  # the canonical slice is 64 x 32 (x, y), shown with y down the rows

    expected = figure([("truth", shown), ("prediction", shown)], [("organ", class_colour(0))], SHOWCASE_MIN_SIZE)
    np.testing.assert_array_equal(np.asarray(evaluation.overlay), np.asarray(expected))


def test_axial_slices_served_as_pictures_are_shown_as_predict_shows_their_volume(tmp_path):
    """The MNI152 "2d" config serves axial slices in canonical order as pictures: with `axial_pictures` the demo
    shows one as predict shows the same slice stored as a NIfTI volume; without, as the picture is stored."""
    label = np.zeros((32, 64), np.uint8)
    label[4:14, 10:30] = 1
    image = np.random.default_rng(2).integers(0, 256, label.shape).astype(np.uint8)
    split = datasets.Dataset.from_dict(
        {"id": ["z040"], "image": [Image.fromarray(image)], "label": [Image.fromarray(label)], "spacing": [[2.0, 2.0]]},
        features=datasets.Features(
            {
                "id": datasets.Value("string"),
                "image": datasets.Image(),
                "label": datasets.Image(),
                "spacing": datasets.Sequence(datasets.Value("float32")),
            }
        ),
    )
    nib.save(nib.Nifti1Image(image[:, :, None].astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "z.nii")
    predictor = MedSAPredictor(BoxOracle(), frame=FRAME, depth_adapter=False, progress=False)
    shown = Image.fromarray(predictor.predict_file(tmp_path / "z.nii", Box3D(10, 4, 0, 30, 14, 1), "ct").overlay())

    def demo(axial_pictures: bool) -> np.ndarray:
        evaluation = evaluate_model(
            BoxOracle(), split, {"organ": (1,)}, "ct", FRAME, PromptSpec("box"), progress=False,
            axial_pictures=axial_pictures,
        )
        return np.asarray(evaluation.overlay)

    def truth_beside_prediction(panel: Image.Image) -> np.ndarray:
        legend_entries = [("organ", class_colour(0))]
        return np.asarray(figure([("truth", panel), ("prediction", panel)], legend_entries, SHOWCASE_MIN_SIZE))

    np.testing.assert_array_equal(demo(axial_pictures=True), truth_beside_prediction(shown))
    as_stored = Image.fromarray(np.asarray(shown).swapaxes(0, 1)[::-1, ::-1])  # radiological view undone
    np.testing.assert_array_equal(demo(axial_pictures=False), truth_beside_prediction(as_stored))
