;; unreachable: `_start` executes `unreachable` straight away.
;; Expected host outcome: trapped (wasm trap: unreachable), no output.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    unreachable))
