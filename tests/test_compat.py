"""The one tokenizer/transformer compatibility check."""
import pytest

from viar_jax.models import compat, transformer, vqvae

VAE = vqvae.VQVAEConfig(vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                        image_size=8, patch_nums=(1, 2, 3, 4))
MODEL = transformer.TransformerConfig(depth=2, embed_dim=32, num_heads=1, num_classes=10,
                                      patch_nums=(1, 2, 3, 4), vocab_size=64, z_channels=8)


def test_matching_pair_passes_unchanged():
  assert compat.fit_tokenizer(VAE, MODEL) is VAE
  compat.check_pair(VAE, MODEL)


def test_tokenizer_is_fitted_to_other_scales():
  model = transformer.TransformerConfig(**{**MODEL.__dict__, 'patch_nums': (1, 2, 4, 8)})
  fitted = compat.fit_tokenizer(VAE, model)
  assert fitted.patch_nums == (1, 2, 4, 8) and fitted.image_size == 8 * VAE.downsample
  with pytest.raises(ValueError, match='patch_nums'):
    compat.check_pair(VAE, model)


@pytest.mark.parametrize('field,value', [('vocab_size', 32), ('z_channels', 4)])
def test_codebook_mismatch_names_the_field(field, value):
  model = transformer.TransformerConfig(**{**MODEL.__dict__, field: value})
  with pytest.raises(ValueError, match=f'{field}: tokenizer .* vs transformer {value}'):
    compat.fit_tokenizer(VAE, model)


def test_swapped_configs_are_refused_naming_their_source():
  with pytest.raises(ValueError, match='ckpt/a holds a TransformerConfig, not a tokenizer'):
    compat.fit_tokenizer(MODEL, MODEL, ('ckpt/a', 'ckpt/b'))
  with pytest.raises(ValueError, match='ckpt/b holds a VQVAEConfig, not a transformer'):
    compat.fit_tokenizer(VAE, VAE, ('ckpt/a', 'ckpt/b'))
