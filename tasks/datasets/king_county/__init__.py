"""King County (Washington, USA) house sales, the demo dataset: everything of it in this folder.

| file | what |
|---|---|
| ``spec.yaml`` | the dataset spec: columns, types, roles, landing formats, split |
| ``kc_house_data.csv.gz`` | the bundled sales (21,613, 2014-05-02 .. 2015-05-27); ``SOURCE.md`` says where from |
| ``features.py`` | ``derive`` and the feature lists, and the comparable-sales configuration |
| ``synth.py`` | the synthetic market at any scale, priced by a known function (docs/synthetic.md, ``homeworth synth``) |
| ``zipcodes.py``, ``ground_truth.py``, ``landing_files.py`` | the generator's zip-code table, its price function, its file layout |
| ``expectations/king_county.py`` | its Great Expectations suite (the data contracts live in ``expectations/``) |
"""
