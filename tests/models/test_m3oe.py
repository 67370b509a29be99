import jax
import numpy as np
import pytest

from m3oe_jax.models import build_model, export_weights, import_weights, init_params
from tests.helpers import batch_of, model_config, tiny_model_and_params


def test_banks_hold_stacked_parameters():
  model, params, dataset = tiny_model_and_params(fcn_dims=[16, 8, 8, 6, 5])
  named = export_weights(params)
  e, d, t = 3, 3, 2
  assert named["shared_experts/layer0/kernel"].shape == (e, 8, 6)
  assert named["shared_experts/layer1/kernel"].shape == (e, 6, 5)
  assert named["domain_experts/layer1/ln_scale"].shape == (d, 5)
  assert named["task_experts/layer0/bias"].shape == (t, 6)
  assert named["gates/kernel"].shape == (d, t, 8, e)
  assert named["towers/hidden/kernel"].shape == (d, t, 5, 5)
  assert named["towers/out/kernel"].shape == (d, t, 5, 1)
  assert named["star/domain_kernel"].shape == (d, 4 * 4 + 1, 16)
  assert {k for k in named if k.startswith("arch/")} == {
      "arch/bal_d", "arch/bal_t", "arch/exp_d", "arch/exp_t"}
  # Members of a bank are initialised independently.
  kernels = named["shared_experts/layer0/kernel"]
  assert not np.allclose(kernels[0], kernels[1])


def test_model_interface_returns_own_domain_logits_and_diagnostics():
  model, params, dataset = tiny_model_and_params()
  batch = batch_of(dataset, 32)
  logits, aux = model.apply({"params": params}, batch)
  assert logits.shape == (32, 2)
  assert aux["gates"].shape == (32, 2, 3)
  assert set(aux["fusion_weights"]) == {"bal_d", "bal_t", "exp_d", "exp_t"}
  # Changing the domain id changes which star weights, gates and towers apply.
  other = dict(batch, domain=(batch["domain"] + 1) % 3)
  assert not np.allclose(model.apply({"params": params}, other)[0], logits)


@pytest.mark.parametrize("fcn_dims, message", [
    ([16, 8, 8], "at least 4 entries"),
    ([16, 8, 6, 4], r"fcn_dims\[2\]=6 must equal the star output fcn_dims\[1\]=8"),
    ([16, 0, 0, 4], "positive integers"),
])
def test_bad_dimensions_are_rejected_clearly(fcn_dims, message):
  with pytest.raises(ValueError, match=message):
    tiny_model_and_params(fcn_dims=fcn_dims)


def test_import_names_missing_unexpected_and_misshapen_weights():
  _, params, _ = tiny_model_and_params()
  named = export_weights(params)
  named.pop("gates/bias")
  named["towers/extra"] = np.zeros(3)
  named["skip/kernel"] = np.zeros((2, 2))
  with pytest.raises(ValueError) as err:
    import_weights(named, params)
  text = str(err.value)
  assert "gates/bias" in text and "towers/extra" in text and "skip/kernel" in text


def test_single_domain_and_single_task_models_work():
  from m3oe_jax.data.datasets import synthetic
  from tests.helpers import tiny_data_config
  dataset = synthetic.make_dataset(tiny_data_config(num_domains=1, num_tasks=1))
  model = build_model(model_config(), dataset.schema)
  params = init_params(model, dataset.schema, jax.random.key(0))
  logits, _ = model.apply({"params": params}, batch_of(dataset, 8))
  assert logits.shape == (8, 1) and np.all(np.isfinite(logits))
