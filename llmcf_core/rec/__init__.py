"""The ICT-enhanced recommender of LLM-CF: backbones, the in-context module, training, serving.

Modules (import what you need; nothing heavy is imported here):

- ``spec``       DataSpec (data sizes + frozen item side information), VARIANTS (hyper-parameters:
                 ``llmcf_core.config.RecModelConfig``, the ``rec.model`` section)
- ``ict``        the in-context module (tiny LLaMA-style decoder over retrieved examples)
- ``fields``     field embeddings shared by backbones and the ICT's feature tokens
- ``backbones``  DIN, DeepFM, DCNv2, AutoInt, xDeepFM, DCN, SASRec, GRU4Rec (``build_model``)
- ``dataset``    the only module that knows the artifact layout: samples + items + embeddings +
                 neighbours -> ``RecTables`` (arrays) -> batches of tensors
- ``metrics``    AUC, LogLoss, Hit/NDCG@k
- ``train``      the training loop (in-process or Ray Train TorchTrainer), model folders
- ``registry``   model folders, the ``latest-<dataset>`` pointer and the publish gate (light)
- ``modelio``    writing/loading a model folder, warm starts
- ``scoring``    online scorer with a pluggable retriever (exact numpy retriever by default)
- ``experiment`` base vs llmcf over seeds -> docs/results/<dataset>.md + PNG (``png``: no matplotlib)
- ``synthetic``  a tiny dataset published in the shared artifact schemas (tests, benchmarks)

See docs/recommender.md.
"""
