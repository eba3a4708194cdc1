;; unknown_import: imports ("env" "evil"), a function no spell may import (only
;; wasi_snapshot_preview1 is allowed), and calls it from `_start`.
;; Expected host outcome: rejected by the import gate with import_not_allowed,
;; before instantiation; `_start` never runs.
(module
  (import "env" "evil" (func $evil))
  (memory (export "memory") 1)
  (func (export "_start")
    (call $evil)))
