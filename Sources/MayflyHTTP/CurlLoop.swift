import CCurl
import Foundation
import Synchronization

/// Owns one libcurl multi handle and the dedicated thread that drives it. Every easy handle is
/// used only on that thread; other threads talk to it through a locked inbox and
/// `curl_multi_wakeup`, the one multi call that is safe from any thread. Blocking calls
/// (`curl_multi_poll`) therefore never run on Swift's cooperative pool.
final class CurlLoop: @unchecked Sendable {
    private enum Command {
        case add(CurlTransfer)
        case resume(ObjectIdentifier)
    }

    private struct Inbox {
        var commands: [Command] = []
        var shuttingDown = false
    }

    private static let globalInit: Void = {
        _ = curl_global_init(Int(CURL_GLOBAL_DEFAULT))
    }()

    private let multi: UnsafeMutableRawPointer
    private let inbox = Mutex(Inbox())
    private let stopped = Mutex(false)
    private let threadDone = DispatchSemaphore(value: 0)
    // Loop-thread state.
    private var active: [UnsafeMutableRawPointer: CurlTransfer] = [:]

    init(name: String) {
        _ = Self.globalInit
        multi = curl_multi_init()
        let thread = Thread { [self] in run() }
        thread.name = name
        thread.start()
    }

    /// Starts `transfer`; its continuation is resumed on the loop thread when it ends.
    func submit(_ transfer: CurlTransfer) throws(HTTPError) {
        let accepted = inbox.withLock { inbox -> Bool in
            if inbox.shuttingDown { return false }
            inbox.commands.append(.add(transfer))
            return true
        }
        guard accepted else { throw .clientShutDown }
        curl_multi_wakeup(multi)
    }

    /// Asks the loop to look at cancelled transfers now rather than at its next wake-up.
    func wake() { curl_multi_wakeup(multi) }

    /// Fails every transfer still running with `clientShutDown` and ends the thread.
    /// Waits for the thread; safe to call more than once.
    func shutdown() {
        let first = inbox.withLock { inbox -> Bool in
            defer { inbox.shuttingDown = true }
            return !inbox.shuttingDown
        }
        guard first else { return }
        curl_multi_wakeup(multi)
        threadDone.wait()
        curl_multi_cleanup(multi)
    }

    // MARK: Loop thread

    private func run() {
        var running: Int32 = 0
        while true {
            let (commands, shuttingDown) = inbox.withLock { inbox in
                defer { inbox.commands.removeAll() }
                return (inbox.commands, inbox.shuttingDown)
            }
            for command in commands { handle(command, shuttingDown: shuttingDown) }
            if shuttingDown {
                for transfer in Array(active.values) { finish(transfer, with: .failure(HTTPError.clientShutDown)) }
                break
            }
            for transfer in Array(active.values) where transfer.cancelled.load(ordering: .acquiring) {
                finish(transfer, with: .failure(CancellationError()))
            }
            _ = curl_multi_perform(multi, &running)
            var remaining: Int32 = 0
            while let message = curl_multi_info_read(multi, &remaining) {
                guard message.pointee.msg == CURLMSG_DONE, let handle = message.pointee.easy_handle,
                    let transfer = active[handle]
                else { continue }
                finish(transfer, with: transfer.outcome(code: mayfly_msg_result(message)))
            }
            _ = curl_multi_poll(multi, nil, 0, 1000, nil)
        }
        threadDone.signal()
    }

    private func handle(_ command: Command, shuttingDown: Bool) {
        switch command {
        case .add(let transfer):
            if shuttingDown {
                transfer.closeStream()
                transfer.continuation?.resume(throwing: HTTPError.clientShutDown)
                transfer.continuation = nil
                return
            }
            if transfer.cancelled.load(ordering: .acquiring) {
                transfer.closeStream()
                transfer.continuation?.resume(throwing: CancellationError())
                transfer.continuation = nil
                return
            }
            let id = ObjectIdentifier(transfer)
            transfer.attachStream { [weak self] in self?.enqueueResume(id) }
            active[transfer.handle] = transfer
            let code = curl_multi_add_handle(multi, transfer.handle)
            if code != CURLM_OK {
                let message = String(cString: curl_multi_strerror(code))
                finish(
                    transfer,
                    with: .failure(
                        HTTPError.transport(
                            code: Int(code.rawValue), message: message,
                            method: transfer.request.method.rawValue, url: URLRedaction.redact(transfer.request.url))))
            }
        case .resume(let id):
            if let transfer = active.values.first(where: { ObjectIdentifier($0) == id }) {
                _ = curl_easy_pause(transfer.handle, CURLPAUSE_CONT)
            }
        }
    }

    private func enqueueResume(_ id: ObjectIdentifier) {
        let accepted = inbox.withLock { inbox -> Bool in
            if inbox.shuttingDown { return false }
            inbox.commands.append(.resume(id))
            return true
        }
        if accepted { curl_multi_wakeup(multi) }
    }

    private func finish(_ transfer: CurlTransfer, with result: Result<HTTPResponse, any Error>) {
        curl_multi_remove_handle(multi, transfer.handle)
        active[transfer.handle] = nil
        transfer.closeStream()
        transfer.continuation?.resume(with: result)
        transfer.continuation = nil
    }
}
