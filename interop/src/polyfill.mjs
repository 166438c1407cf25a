// js-libp2p 3.x uses Promise.withResolvers (Node >= 22). Node 20 lacks it: add it.
// Imported first by every entry point, before any libp2p module is loaded.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
