local counter = 0
function request()
  counter = counter + 1
  return wrk.format("POST", "/protected", {["X-User-ID"] = "cyc-" .. (counter % 1000)}, "")
end
