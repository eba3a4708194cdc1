;; huge_data_segment: declares a memory with a 1 GiB minimum (16384 pages) and a
;; data segment in its last bytes, so merely instantiating it needs 1 GiB.
;; Expected host outcome: memory_limit_exceeded at instantiation (or earlier, at
;; the gate, from the declared minimum); `_start` never runs.
(module
  (memory (export "memory") 16384)
  ;; 1 GiB - 4 = 1073741820: the last four bytes of the minimum memory.
  (data (i32.const 1073741820) "evil")
  (func (export "_start")))
