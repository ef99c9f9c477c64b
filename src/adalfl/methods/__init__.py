"""Training methods. Each module defines one Method subclass and its CONFIG_SCHEMA dataclass;
``conf/method/<name>.yaml`` points ``_target_`` at the class."""
