"""Data sets as the annotation tools and trainers export them, read one way for training and evaluation.

Torch-free (numpy, PIL, pyyaml, pycocotools), so the serving image reads what `optic train` reads:
  coco         COCO JSON: COCO's own, Roboflow (`{train,valid,test}/_annotations.coco.json`), CVAT "COCO 1.0"
               (`annotations/instances_default.json` + `images/`), Label Studio (`result.json` + `images/`);
  yolo         YOLO txt: Ultralytics `data.yaml` layouts, Roboflow's YOLOv5/v8 export, `classes.txt` folders;
  detection    the splits of either, for detection;
  instances    COCO or YOLO-seg polygons, for instance segmentation;
  masks        PNG class-index masks or COCO painted into class maps, for semantic segmentation;
  folders      image-folder classification trees.
A reader that cannot read a data set raises `DatasetError` (a ValueError) naming the file and the problem.
"""

from dataformats.errors import DatasetError

__all__ = ["DatasetError"]
