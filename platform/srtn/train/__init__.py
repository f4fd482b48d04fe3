"""Stage 2, training on Ray Train: the driver (`fit`), the per-worker loop as named steps (`loop`) and its
batch sources (`batches`), the Ray-free forward/backward/optimiser step (`step`), training's crops and flips
(`augment`, Ray-free too), the train/val Ray Datasets (`datasets`), the checkpoint format (`checkpoints`)."""

from srtn.exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "fit": "fit",
        "build_trainer": "fit",
        "run_training": "fit",
        "TrainingOutcome": "fit",
        "train_loop_per_worker": "loop",
        "Trainables": "step",
        "build_trainables": "step",
        "train_step": "step",
        "aligned_crop": "augment",
        "augment_pair": "augment",
        "decode_train_batch": "augment",
        "build_datasets": "datasets",
        "load_checkpoint_model": "checkpoints",
    },
)
