"""The fixtures every integration's tests share: a store whose right answer is known (a reader
of book i likes movie i) and the README example's output (:mod:`xdretrieve.testing`)."""

from xdretrieve.testing import paired_settings, readme_example_output, themes  # noqa: F401
