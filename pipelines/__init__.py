"""diffusers pipelines of the exports: pipeline_boot.py and pipeline_ddim.py are self-contained and copied
into every export that uses them; students.py is the repository's side of them (build, load, sample), never copied."""
