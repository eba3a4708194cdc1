;; infinite_loop: `_start` spins in `loop br 0` forever and never calls the host.
;; Expected host outcome: out_of_fuel (deadline_exceeded instead if fuel_max is so
;; large that the wall-clock deadline fires first). Never ok, never a hung worker.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $spin
      (br $spin))))
