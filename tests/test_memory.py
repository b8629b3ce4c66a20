"""Memory returns to baseline: second-order steps hold no reference cycle through their hooks."""
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

import mupso_lite as ml

X, Y = torch.randn(32, 12, generator=torch.Generator().manual_seed(0)), torch.arange(32) % 3


def steps(model, opt, n=4):
    for _ in range(n):
        opt.zero_grad()
        out = model(X)
        if hasattr(opt, "sample_fisher"):
            opt.sample_fisher(out)
        F.cross_entropy(out, Y).backward()
        opt.step()


@pytest.mark.parametrize("name, options", [("kfac", {}), ("kfac", {"fisher": "mc"}), ("foof", {}),
                                           ("shampoo", {}), ("sgd", {}), ("adam", {})])
def test_deleting_model_and_optimizer_frees_them(name, options):
    model = ml.MLP(12, 3, 16, base_width=8, bias=True, seed=0)
    opt = ml.make_optimizer(model, name, lr=0.05, **options)
    steps(model, opt)
    refs = [weakref.ref(model), weakref.ref(opt), *(weakref.ref(m) for m in model.layers)]
    del model, opt
    gc.collect()
    assert [r() is None for r in refs] == [True] * len(refs)


def test_activations_of_a_step_are_freed_without_the_garbage_collector():
    """Reference counting alone frees each step's layer outputs (a cycle through a tensor's own
    hook would keep them, and the whole graph, alive until a collection that cannot free it)."""
    model = ml.MLP(12, 3, 16, base_width=8, seed=0)
    opt = ml.make_optimizer(model, "kfac", lr=0.05)
    outputs = []
    handle = model.layers[1].register_forward_hook(lambda m, i, o: outputs.append(weakref.ref(o)))
    gc.disable()
    try:
        steps(model, opt, 3)
        alive = [r() is not None for r in outputs]
    finally:
        gc.enable()
        handle.remove()
    assert alive == [False] * 3


def test_deleting_the_optimizer_detaches_its_hooks_and_remove_hooks_is_idempotent():
    model = ml.MLP(12, 3, 16, base_width=8, seed=0)
    bare = (len(model._forward_pre_hooks), [len(m._forward_hooks) for m in model.layers])
    opt = ml.make_optimizer(model, "kfac", lr=0.05)
    steps(model, opt, 2)
    assert [len(m._forward_hooks) for m in model.layers] == [h + 1 for h in bare[1]]
    del opt
    gc.collect()
    assert (len(model._forward_pre_hooks), [len(m._forward_hooks) for m in model.layers]) == bare
    opt = ml.make_optimizer(model, "shampoo", lr=0.05)
    opt.remove_hooks()
    opt.remove_hooks()
    assert (len(model._forward_pre_hooks), [len(m._forward_hooks) for m in model.layers]) == bare
    steps(model, opt, 1)  # the dense path still steps
