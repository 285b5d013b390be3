local req
function init(args) req = wrk.format("POST", "/protected", {["X-User-ID"] = "hot-user"}, "") end
function request() return req end
