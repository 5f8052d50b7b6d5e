import pytest
import torch
import torch.nn as nn

from imgcls.errors import ImgclsError
from imgcls.models import MODELS, create_model, num_params
from imgcls.models.summary import summarize


def test_cnn_has_the_seed_parameter_count():
    assert num_params(create_model("cnn", (3, 32, 32), 10)) == 76_922


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 2), ((3, 40, 24), 7)])
def test_every_model_maps_images_to_logits(name, shape, classes):
    model = create_model(name, shape, classes).eval()
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, classes)
    assert out.dtype == torch.float32


def test_mlp_layer_widths_follow_the_tutorial():
    model = create_model("mlp", (1, 28, 28), 10)
    widths = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [(784, 512), (512, 256), (256, 128), (128, 64), (64, 10)]
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert sum(isinstance(m, nn.Dropout) for m in create_model("mlp", (1, 28, 28), 10, dropout=0.2).modules()) == 4


def test_logits_have_no_activation():
    model = create_model("cnn", (1, 28, 28), 10)
    assert isinstance(list(model.children())[-1], nn.Linear)


def test_resnet18_uses_a_small_image_stem_up_to_64_px():
    for shape in ((3, 32, 32), (3, 64, 64)):
        model = create_model("resnet18", shape, 10)
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, nn.Identity)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert create_model("resnet18", (1, 28, 28), 10).conv1.in_channels == 1


def test_resnet18_keeps_the_imagenet_architecture_for_photos():
    """Above 64 px: torchvision's own ResNet-18 (7x7/2 stem and max-pool), so that its ImageNet weights fit and a 128 px
    image costs a 16th of the small-image variant's convolutions."""
    import torchvision.models as tvm

    model = create_model("resnet18", (3, 128, 128), 5)
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2) and isinstance(model.maxpool, nn.MaxPool2d)
    reference = tvm.resnet18(num_classes=5).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.items()}
    grey = create_model("resnet18", (1, 96, 80), 5)
    assert grey.conv1.in_channels == 1 and grey.conv1.stride == (2, 2)
    assert grey(torch.zeros(2, 1, 96, 80)).shape == (2, 5)


def test_lenet5_matches_the_cifar_tutorial():
    assert num_params(create_model("lenet5", (3, 32, 32), 10)) == 62_006


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ImgclsError, match="unknown model 'vgg'.*mlp, cnn, lenet5, resnet18"):
        create_model("vgg", (3, 32, 32), 10)


def test_too_small_images_are_refused_with_advice():
    with pytest.raises(ImgclsError, match="at least 16x16.*--image-size"):
        create_model("lenet5", (1, 12, 12), 10)


def test_summary_lists_layers_shapes_and_total():
    text = summarize(create_model("cnn", (3, 32, 32), 10), (3, 32, 32))
    assert "16x6x6" in text and "73,856" in text
    assert "total params 76,922" in text


@pytest.mark.parametrize("name", sorted(n for n, info in MODELS.items() if info.convolutional))
def test_channels_last_gives_the_same_logits(name):
    """Training and evaluation run conv nets in channels_last on CPU and CUDA; export and MPS do not. The logits must
    not depend on the memory layout (digitnet flattens in (H, W, C) order, which must hold for both layouts)."""
    torch.manual_seed(0)
    model = create_model(name, (1, 28, 28), 10).eval()
    x = torch.randn(4, 1, 28, 28)
    plain = model(x)
    fast = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(plain, fast, atol=1e-4)
