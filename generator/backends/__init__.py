"""Generator backends: each module builds one kind of generator behind `generator.Generator`."""
