"""The notebook's Keras model, timed on given data: the peer row of ``python benchmarks/bench.py``.

Run by the benchmark with any interpreter that has TensorFlow (never a dependency of this project)::

    PYTHON keras_peer.py IMAGES.npy LABELS.npy --batch-size 128 --warmup 5 --steps 30 [--threads N]

``IMAGES.npy`` holds uint8 images (N, 3, 32, 32) as our data module keeps them, ``LABELS.npy`` their int64 labels.
The images are normalized as the notebook's ``pixel`` run does (per-pixel mean and population std of the given
images), then ``model.fit`` trains one epoch over ``(warmup + steps) * batch_size`` of them. Prints one JSON line:
``images_per_s`` over the timed steps (from the start of step ``warmup`` to the end of the last), ``cpu_ms_per_step``
(process CPU time) and the versions. This file imports neither torch nor anything of this project.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def build_model(keras, learning_rate: float = 1e-3, decay: float = 1e-6):  # noqa: ANN001, ANN201
    """The notebook's network and optimizer: 3 x Conv2D(32, 3x3, ReLU), Dense(1024, ReLU), Dense(10, softmax),
    Adam(lr 1e-3) with the legacy time decay ``lr / (1 + decay * step)``."""
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            *(layers.Conv2D(32, 3, activation="relu") for _ in range(3)),
            layers.Flatten(),
            layers.Dense(1024, activation="relu"),
            layers.Dense(10, activation="softmax"),
        ]
    )
    schedule = keras.optimizers.schedules.InverseTimeDecay(learning_rate, decay_steps=1, decay_rate=decay)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule, epsilon=1e-7),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images")
    parser.add_argument("labels")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra-op threads (0: its default)")
    args = parser.parse_args()
    import tensorflow as tf
    from tensorflow import keras

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    n = (args.warmup + args.steps) * args.batch_size
    images = np.load(args.images)[:n].transpose(0, 2, 3, 1).astype(np.float32)
    labels = np.load(args.labels)[:n]
    if len(images) < n:
        raise SystemExit(
            f"need {n} images for {args.warmup} + {args.steps} steps of {args.batch_size}, got {len(images)}"
        )
    images = (images - images.mean(0)) / images.std(0)
    clock: dict[str, float] = {}

    class StepClock(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: object = None) -> None:
            if batch == args.warmup:
                clock.update(wall=time.perf_counter(), cpu=time.process_time())

        def on_train_batch_end(self, batch: int, logs: object = None) -> None:
            clock.update(wall_end=time.perf_counter(), cpu_end=time.process_time())

    keras.utils.set_random_seed(0)
    build_model(keras).fit(
        images, labels, batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0, callbacks=[StepClock()]
    )
    print(
        json.dumps(
            {
                "images_per_s": args.steps * args.batch_size / (clock["wall_end"] - clock["wall"]),
                "cpu_ms_per_step": 1000 * (clock["cpu_end"] - clock["cpu"]) / args.steps,
                "tensorflow": tf.__version__,
                "keras": getattr(keras, "__version__", None) or tf.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
