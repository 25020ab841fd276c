"""Melbourne (Victoria, Australia) house sales, a second real market: everything of it in this folder.

| file | what |
|---|---|
| ``spec.yaml`` | the dataset spec as ``homeworth spec infer`` wrote it, with the few edits marked ``# EDIT`` |
| ``expectations.py`` | the starter Great Expectations suite ``spec infer --suite`` wrote |
| ``melb_data.csv.gz`` | the bundled sales (13,580, 2016-01-28 .. 2017-09-23); ``SOURCE.md`` says where from |

No feature module: the spec alone drives the pipeline (docs/datasets.md).
"""
