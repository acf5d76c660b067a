"""Tasks: semantic, instance and panoptic segmentation behind one Python API.

    from kseg import tasks
    result = tasks.train("runs/shapes", task="instance", shapes=20, image_size=(64, 64), epochs=1)
    report = tasks.evaluate_run("runs/shapes")
    tasks.predict_run("runs/shapes", "photos/", "predictions/")
    info = tasks.load_run("runs/shapes")   # RunInfo(task, run_json, spec, model_path)

Each task (`get_task(name)`) owns its data spec, inputs, model, losses/metrics, evaluation and
prediction (`kseg.tasks.base.Task`).
"""

from kseg.tasks.api import TASKS, evaluate_run, get_task, load_run, predict_run, task_of_run, train
from kseg.tasks.base import RunInfo, Task, image_files
from kseg.tasks.detection import DetectionTask
from kseg.tasks.instance import InstanceTask
from kseg.tasks.panoptic import PanopticTask
from kseg.tasks.semantic import SemanticTask

__all__ = [
    "TASKS",
    "DetectionTask",
    "InstanceTask",
    "PanopticTask",
    "RunInfo",
    "SemanticTask",
    "Task",
    "evaluate_run",
    "get_task",
    "image_files",
    "load_run",
    "predict_run",
    "task_of_run",
    "train",
]
