import pytest
import torch

from raytune_ctr import models


def test_mnist_cnn_is_the_pytorch_examples_net():
    net = models.build("mnist_cnn", (1, 28, 28), 10)
    assert net.fc1.in_features == 9216 and net.fc1.out_features == 128
    assert (net.conv1.in_channels, net.conv1.out_channels, net.conv1.kernel_size) == (1, 32, (3, 3))
    assert (net.conv2.out_channels, net.dropout1.p, net.dropout2.p) == (64, 0.25, 0.5)
    # pytorch/examples' Net has exactly 1,199,882 parameters.
    assert sum(p.numel() for p in net.parameters()) == 1_199_882
    out = net(torch.randn(4, 1, 28, 28))
    assert torch.allclose(out.exp().sum(1), torch.ones(4), atol=1e-5)  # log-softmax


def test_mlp_default_is_784_100_10():
    net = models.build("mlp", (1, 28, 28), 10)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 100), (100, 10)]
    deeper = models.build("mlp", (1, 8, 8), 10, hidden=(32, 16))
    assert deeper(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("name,shape", [("resnet18", (1, 8, 8)), ("resnet18", (3, 64, 64)),
                                        ("resnet50", (3, 32, 32)), ("alexnet", (1, 64, 64)),
                                        ("mnist_cnn", (3, 32, 32))])
def test_models_adapt_to_channels_size_and_classes(name, shape):
    net = models.build(name, shape, 7).eval()
    with torch.no_grad():
        assert net(torch.randn(2, *shape)).shape == (2, 7)


def test_too_small_input_is_rejected_by_name():
    with pytest.raises(ValueError, match="alexnet needs inputs of at least 63x63"):
        models.build("alexnet", (1, 28, 28), 10)
