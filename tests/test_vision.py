"""Tests for vision.py: the CLIP tower against transformers' CLIPVisionModel (random weights,
saved to disk: no download), the preprocessing against transformers' CLIP image processor
after LLaVA's expand2square (restated here from LLaVA's code), the ViT-L/14-336 preset's size
and key names, and bad images. (Training the tiny CLIP: tests/test_train_clip.py.)
Run: python -m pytest -q tests/test_vision.py
"""

import json
import os

import pytest
import torch
from PIL import Image

from vision import CLIP_MEAN, CLIP_STD, CLIPVisionTower, ImageProcessor, VisionConfig

transformers = pytest.importorskip("transformers")
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel  # noqa: E402
from conftest import randomize  # noqa: E402

SMALL = dict(image_size=56, patch_size=14, hidden_size=64, intermediate_size=128,
             num_hidden_layers=3, num_attention_heads=4, hidden_act="quick_gelu")

def pixels(size, n=2, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -----------------------------------------------------------------------------
# the tower against transformers

@pytest.fixture(scope="module")
def hf_vision(tmp_path_factory):
    model = randomize(CLIPVisionModel(CLIPVisionConfig(**SMALL))).eval()
    path = str(tmp_path_factory.mktemp("clip_vision"))
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize("select_layer", [-2, -1, 0, 1])
def test_from_hf_matches_hidden_states(hf_vision, select_layer):
    model, path = hf_vision
    tower = CLIPVisionTower.from_hf(path, select_layer=select_layer)
    x = pixels(56)
    with torch.no_grad():
        want = model(pixel_values=x, output_hidden_states=True).hidden_states[select_layer][:, 1:]
        got = tower(x)
    assert got.shape == (2, 16, 64) == (2, tower.num_patches, tower.hidden_size)
    assert tower.grid == 4
    assert (got - want).abs().max() < 1e-4


def test_pooled_output_matches(hf_vision):  # the class token through post_layernorm: CLIP's image embedding
    model, path = hf_vision
    x = pixels(56)
    with torch.no_grad():
        want = model(pixel_values=x).pooler_output
        got = CLIPVisionTower.from_hf(path).image_embedding(x)
    assert (got - want).abs().max() < 1e-4


def test_layers_after_the_selected_one_are_not_run(hf_vision, monkeypatch):
    tower = CLIPVisionTower.from_hf(hf_vision[1])  # 3 layers, select -2: blocks 1 and 2 only
    calls = []
    for i, layer in enumerate(tower.vision_model.encoder.layers):
        monkeypatch.setattr(layer, "forward", lambda x, i=i, f=layer.forward: calls.append(i) or f(x))
    tower(pixels(56))
    assert calls == [0, 1]


def test_full_clip_model_loads_and_skips_text(tmp_path):
    config = CLIPConfig(vision_config=SMALL, text_config=dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1), projection_dim=16)
    model = randomize(CLIPModel(config)).eval()
    model.save_pretrained(tmp_path)
    x = pixels(56)
    with torch.no_grad():
        want = model.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
        got = CLIPVisionTower.from_hf(str(tmp_path))(x)
    assert (got - want).abs().max() < 1e-4


def test_saved_tower_loads_in_transformers(tmp_path):
    tower = randomize(CLIPVisionTower(VisionConfig(**SMALL))).eval()
    tower.save_hf(str(tmp_path))
    hf = CLIPVisionModel.from_pretrained(str(tmp_path)).eval()
    x = pixels(56)
    with torch.no_grad():
        want = hf(pixel_values=x, output_hidden_states=True).hidden_states[-2][:, 1:]
        got = tower(x)
    assert (got - want).abs().max() < 1e-4


def test_load_errors_name_the_problem(hf_vision, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        CLIPVisionTower.from_hf(str(tmp_path / "nowhere"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "siglip_vision_model"}))
    with pytest.raises(ValueError, match="siglip_vision_model.*expected a CLIP model"):
        CLIPVisionTower.from_hf(str(tmp_path))
    # weights of a 2-layer model under a 3-layer config: layer 2 missing, an extra key unexpected
    from safetensors.torch import load_file, save_file
    state = load_file(os.path.join(hf_vision[1], "model.safetensors"))
    state = {k: v for k, v in state.items() if "layers.2." not in k}
    state["embeddings.extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(open(os.path.join(hf_vision[1], "config.json")).read())
    with pytest.raises(ValueError, match=r"missing keys.*layers\.2\.(?s:.*)unexpected keys.*embeddings\.extra"):
        CLIPVisionTower.from_hf(str(tmp_path))
    with pytest.raises(ValueError, match="select_layer 5 is out of range"):
        CLIPVisionTower(VisionConfig(**SMALL), select_layer=5)


def test_vit_l_14_336_preset_is_the_official_tower():
    official = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=1024, intermediate_size=4096,
                                num_hidden_layers=24, num_attention_heads=16, hidden_act="quick_gelu",
                                layer_norm_eps=1e-5, projection_dim=768)
    with torch.device("meta"):
        hf = CLIPVisionModel(official)
        ours = CLIPVisionTower(VisionConfig.preset("clip-vit-l-14-336"))
    hf_keys = {k if k.startswith("vision_model.") else "vision_model." + k for k in hf.state_dict()}
    assert set(ours.state_dict()) == hf_keys
    n = sum(p.numel() for p in ours.parameters())
    assert n == sum(p.numel() for p in hf.parameters()) == 303_507_456
    assert (ours.grid, ours.num_patches, ours.hidden_size) == (24, 576, 1024)


# -----------------------------------------------------------------------------
# preprocessing against transformers' CLIPImageProcessor after LLaVA's expand2square

def llava_expand2square(pil_img, background_color):
    """LLaVA's llava/mm_utils.py expand2square, restated."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def clip_336_processor():
    """openai/clip-vit-large-patch14-336's preprocessor_config.json, built in code. transformers 5
    calls the PIL implementation (the one LLaVA ran) CLIPImageProcessorPil."""
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, resample=3,
               do_center_crop=True, do_normalize=True, do_resize=True, do_rescale=True,
               do_convert_rgb=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def random_image(w, h, mode, seed):
    g = torch.Generator().manual_seed(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = torch.randint(0, 256, (h, w, channels), generator=g, dtype=torch.uint8).squeeze(-1).numpy()
    return Image.fromarray(arr, mode)


@pytest.mark.parametrize("w,h,mode", [(500, 300, "RGB"), (301, 517, "RGB"), (400, 250, "RGBA"),
                                      (200, 333, "L"), (336, 336, "RGB"), (120, 90, "RGB")])
def test_processor_matches_llava_pipeline(w, h, mode):
    img = random_image(w, h, mode, seed=w + h)
    fill = tuple(int(x * 255) for x in CLIP_MEAN)
    assert fill == (122, 116, 104)
    ref = clip_336_processor()(llava_expand2square(img.convert("RGB"), fill),
                               return_tensors="pt")["pixel_values"][0]
    got = ImageProcessor(336)(img)
    assert got.shape == ref.shape == (3, 336, 336)
    assert (got - ref).abs().max() < 1e-5


@pytest.mark.parametrize("w,h", [(450, 299), (299, 451)])  # 336 * 450 / 299 = 505.7: truncated to 505
def test_processor_without_padding_resizes_and_crops_like_transformers(w, h):
    img = random_image(w, h, "RGB", seed=3)
    ref = clip_336_processor()(img, return_tensors="pt")["pixel_values"][0]
    assert (ImageProcessor(336, pad_to_square=False)(img) - ref).abs().max() < 1e-5


def test_processor_reads_paths_and_palette_images(tmp_path):
    img = random_image(90, 60, "RGB", seed=4).convert("P")
    img.save(tmp_path / "p.png")
    assert (ImageProcessor(64)(str(tmp_path / "p.png")) - ImageProcessor(64)(img)).abs().max() == 0


def test_corrupt_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="broken.png.*corrupt"):
        ImageProcessor(64)(str(bad))
    random_image(64, 64, "RGB", seed=5).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match="cut.png"):
        ImageProcessor(64)(str(tmp_path / "cut.png"))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        ImageProcessor(64)(str(tmp_path / "missing.png"))
