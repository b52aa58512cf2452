"""The networks of U = g(f(M)) and their checkpoints.

- stylegan2.py: g, the StyleGAN2 generator (rosinality state-dict layout); `Generator(GeneratorConfig)`.
- encoder.py: f0 / f, pSp's GradualStyleEncoder; `GradualStyleEncoder(EncoderConfig)`.
- irse.py: the IR-SE backbone (ArcFace for the ID loss, and the encoder's body); `id_preprocess`.
- psp.py: `LatentEncoder` (codes = encoder(x) + latent_avg) and `PSP` (encoder + latent_avg + g).
- checkpoints.py: public formats in, our format out, model sets (`ModelSet`, `init_model_set`).

Architecture code never knows where weights come from; checkpoints.py is the only loader.
"""

from unmask_core.models.encoder import EncoderConfig, GradualStyleEncoder
from unmask_core.models.irse import Backbone, BackboneConfig, id_preprocess
from unmask_core.models.psp import PSP, LatentEncoder
from unmask_core.models.stylegan2 import Generator, GeneratorConfig

__all__ = [
    "PSP",
    "Backbone",
    "BackboneConfig",
    "EncoderConfig",
    "Generator",
    "GeneratorConfig",
    "GradualStyleEncoder",
    "LatentEncoder",
    "id_preprocess",
]
