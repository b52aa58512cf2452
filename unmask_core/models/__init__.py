"""The networks of U = g(f(M)) and their checkpoints.

- stylegan2.py: g, the StyleGAN2 generator (rosinality state-dict layout); `Generator(GeneratorConfig)`.
- encoder.py: f0 / f, pSp's GradualStyleEncoder; `GradualStyleEncoder(EncoderConfig)`.
- irse.py: the IR-SE backbone (ArcFace for the ID loss, and the encoder's body); `id_preprocess`.
- psp.py: `LatentEncoder` (codes = encoder(x) + latent_avg) and `PSP` (encoder + latent_avg + g).
- format.py: our checkpoint file (config + sha256 per model), whatever the model.
- kinds.py: the model kinds, one entry each (type, config, builder, files in a set, public weights);
  `save_module`, `load_module`.
- public.py: the public formats in (rosinality g_ema, pSp, IR-SE50, facenet, LPIPS AlexNet), with
  configs inferred from the weights' shapes.
- model_set.py: a folder of one file per model of the kinds (g, f0, f, ArcFace, FaceNet):
  `ModelSet`, `init_model_set`.
- cache.py: the node cache: one verified download of each remote weights file per node.
- importer.py: public checkpoints into a model set (`unmask models import`), and older sets' manifests
  completed with file checksums (`unmask models checksum`).

Architecture code never knows where weights come from; format.py, kinds.py and public.py are the only
loaders.
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
