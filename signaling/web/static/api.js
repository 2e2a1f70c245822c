// The REST API (docs/protocol.md, "Registration"): JSON in, JSON or problem JSON out.

export class ApiError extends Error {
  constructor(status, problem, retryAfter = 0) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    /** The machine-readable problem code: `code`, else the end of an Anruf `type`. */
    this.code = problem.code || String(problem.type || "").replace(/^urn:anruf:problem:/, "").replace(/^about:blank$/, "");
    /** Seconds to wait before trying again (429), when the server says. */
    this.retryAfter = Number(problem.retry_after) || retryAfter;
  }
}

export class Api {
  constructor(token = null) {
    this.token = token;
    this.onUnauthorized = () => {};
  }

  async request(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store",
      });
    } catch {
      throw new ApiError(0, { detail: "The server cannot be reached. Check your connection." });
    }
    const text = await response.text();
    let data = {};
    try {
      data = text ? JSON.parse(text) : {};
    } catch {
      data = { detail: text };
    }
    if (!response.ok) {
      if (response.status === 401 && this.token) this.onUnauthorized();
      if (response.status === 429 && !data.detail) data.detail = "Too many attempts. Try again later.";
      throw new ApiError(response.status, data, Number(response.headers.get("Retry-After")) || 0);
    }
    return data;
  }

  requestCode(number) {
    return this.request("POST", "/v1/verification", { number });
  }

  register(number, code, name) {
    return this.request("POST", "/v1/devices", { number, code, name });
  }

  async devices() {
    return (await this.request("GET", "/v1/devices")).devices;
  }

  revoke(deviceId) {
    return this.request("DELETE", `/v1/devices/${encodeURIComponent(deviceId)}`);
  }

  async discover(numbers) {
    return (await this.request("POST", "/v1/contacts/discover", { numbers })).registered;
  }

  async history(limit = 50) {
    return (await this.request("GET", `/v1/calls?limit=${limit}`)).calls;
  }
}
