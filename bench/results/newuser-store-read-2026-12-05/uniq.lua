local counter = 0
local prefix = tostring(math.random(1, 1e9)) .. "-"
function init(args) prefix = args[1] or prefix end
function request()
  counter = counter + 1
  return wrk.format("POST", "/protected", {["X-User-ID"] = prefix .. counter}, "")
end
